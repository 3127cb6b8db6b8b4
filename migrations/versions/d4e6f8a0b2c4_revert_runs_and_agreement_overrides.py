"""revert runs (the run a revert puts back) and per-product agreement overrides of a company mapping

Revision ID: d4e6f8a0b2c4
Revises: c8d2e4f6a1b3
Create Date: 2026-11-30 21:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = 'd4e6f8a0b2c4'
down_revision = 'c8d2e4f6a1b3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reverts_run_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('overwrite_changed', sa.Boolean(), server_default='0', nullable=False))
        batch_op.create_foreign_key('fk_sync_runs_reverts_run_id', 'sync_runs', ['reverts_run_id'], ['id'],
                                    ondelete='SET NULL')
    op.create_table(
        'agreement_overrides',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('company_mapping_id', sa.Integer(), nullable=False),
        sa.Column('product_id', sa.Integer(), nullable=False),
        sa.Column('agreement_id', sa.String(length=64), nullable=False),
        sa.Column('agreement_name', sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(['company_mapping_id'], ['company_mappings.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['product_id'], ['products.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('company_mapping_id', 'product_id', name='uq_agreement_overrides_mp'),
    )


def downgrade():
    op.drop_table('agreement_overrides')
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_sync_runs_reverts_run_id', type_='foreignkey')
        batch_op.drop_column('overwrite_changed')
        batch_op.drop_column('reverts_run_id')
