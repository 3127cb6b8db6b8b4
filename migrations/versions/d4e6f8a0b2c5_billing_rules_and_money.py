"""billing rules per product mapping; the raw count, rule and money of each line result

Revision ID: d4e6f8a0b2c5
Revises: d4e5f6a7b8c9
Create Date: 2026-11-30 22:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = 'd4e6f8a0b2c5'
down_revision = 'd4e5f6a7b8c9'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('product_mappings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('included', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('minimum', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('maximum', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('extra', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('line_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('count', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rule', sa.String(length=200), server_default='', nullable=False))
        batch_op.add_column(sa.Column('unit_price', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('unit_cost', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('currency', sa.String(length=10), server_default='', nullable=False))
        batch_op.add_column(sa.Column('price_change', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('margin_change', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('effective_from', sa.Date(), nullable=True))


def downgrade():
    with op.batch_alter_table('line_results', schema=None) as batch_op:
        for column in ('effective_from', 'margin_change', 'price_change', 'currency', 'unit_cost', 'unit_price',
                       'rule', 'count'):
            batch_op.drop_column(column)
    with op.batch_alter_table('product_mappings', schema=None) as batch_op:
        for column in ('extra', 'maximum', 'minimum', 'included'):
            batch_op.drop_column(column)
