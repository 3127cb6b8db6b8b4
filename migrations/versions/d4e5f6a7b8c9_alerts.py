"""alerts: notification channels, alert events, deliveries

Revision ID: d4e5f6a7b8c9
Revises: d4e6f8a0b2c4
Create Date: 2026-11-30 22:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

import webapp.models._types


revision = 'd4e5f6a7b8c9'
down_revision = 'd4e6f8a0b2c4'
branch_labels = None
depends_on = None

UTC = webapp.models._types.UtcDateTime(timezone=True)


def upgrade():
    op.create_table(
        'alert_channels',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('target_encrypted', sa.Text(), nullable=False),
        sa.Column('target_hint', sa.String(length=255), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('min_severity', sa.String(length=10), nullable=False),
        sa.Column('digest', sa.Boolean(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('failures_in_row', sa.Integer(), nullable=False),
        sa.Column('paused_at', UTC, nullable=True),
        sa.Column('last_digest_at', UTC, nullable=True),
        sa.Column('created_at', UTC, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_channels')),
    )
    op.create_table(
        'alert_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('severity', sa.String(length=10), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('title', sa.Text(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('integration_id', sa.Integer(), nullable=True),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('created_at', UTC, nullable=False),
        sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                                name=op.f('fk_alert_events_integration_id_integrations'), ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_alert_events_run_id_sync_runs'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_events')),
    )
    op.create_index('ix_alert_events_created', 'alert_events', ['created_at'], unique=False)
    op.create_table(
        'alert_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('channel_id', sa.Integer(), nullable=False),
        sa.Column('event_id', sa.Integer(), nullable=True),
        sa.Column('event_key', sa.String(length=255), nullable=False),
        sa.Column('what', sa.String(length=40), nullable=False),
        sa.Column('state', sa.String(length=10), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('response_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('sent_at', UTC, nullable=True),
        sa.Column('digest_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['channel_id'], ['alert_channels.id'],
                                name=op.f('fk_alert_deliveries_channel_id_alert_channels'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['event_id'], ['alert_events.id'],
                                name=op.f('fk_alert_deliveries_event_id_alert_events'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['digest_id'], ['alert_deliveries.id'],
                                name=op.f('fk_alert_deliveries_digest_id_alert_deliveries'), ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_deliveries')),
    )
    op.create_index('ix_alert_deliveries_channel_created', 'alert_deliveries', ['channel_id', 'created_at'])
    op.create_index('ix_alert_deliveries_channel_key', 'alert_deliveries', ['channel_id', 'event_key'])


def downgrade():
    op.drop_index('ix_alert_deliveries_channel_key', table_name='alert_deliveries')
    op.drop_index('ix_alert_deliveries_channel_created', table_name='alert_deliveries')
    op.drop_table('alert_deliveries')
    op.drop_index('ix_alert_events_created', table_name='alert_events')
    op.drop_table('alert_events')
    op.drop_table('alert_channels')
