"""sync engine: the run a company is held by, a run's stop flag, line verification

Revision ID: c8d2e4f6a1b3
Revises: c3d9e8f1a2b4
Create Date: 2026-11-30 18:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = 'c8d2e4f6a1b3'
down_revision = 'c3d9e8f1a2b4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stop_reason', sa.Text(), server_default='', nullable=False))
    with op.batch_alter_table('company_mappings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sync_run_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_company_mappings_sync_run_id', 'sync_runs', ['sync_run_id'], ['id'],
                                    ondelete='SET NULL')
    with op.batch_alter_table('line_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verification', sa.String(length=20), nullable=True))
    # Companies held by a run before this migration: hand them back so the sweeper's rules apply.
    op.execute("UPDATE company_mappings SET status = 'error', status_reason = 'The sync was interrupted by an "
               "upgrade; sync again.', job_id = NULL WHERE status IN ('queued', 'syncing')")
    op.execute("UPDATE sync_runs SET state = 'failed', message = 'Interrupted by an upgrade.' "
               "WHERE state IN ('queued', 'running')")


def downgrade():
    with op.batch_alter_table('line_results', schema=None) as batch_op:
        batch_op.drop_column('verification')
    with op.batch_alter_table('company_mappings', schema=None) as batch_op:
        batch_op.drop_constraint('fk_company_mappings_sync_run_id', type_='foreignkey')
        batch_op.drop_column('sync_run_id')
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('stop_reason')
