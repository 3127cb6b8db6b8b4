"""audit_events: a PostgreSQL trigger refuses UPDATE and DELETE, so audit rows are immutable in the
database itself, not only through the ORM (issue 11 §10)

SQLite (the embedded, single-process mode) keeps the ORM guard only: its triggers would also refuse
the test suite's table cleanup, and it has no roles to protect against.

Revision ID: c3d9e8f1a2b4
Revises: b7c1e2d3f4a5
Create Date: 2026-11-30 18:30:00.000000

"""
from alembic import op


revision = 'c3d9e8f1a2b4'
down_revision = 'b7c1e2d3f4a5'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("""
        CREATE FUNCTION seatsync_refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events rows are immutable: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION seatsync_refuse_audit_change()
    """)


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP TRIGGER IF EXISTS audit_events_immutable ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS seatsync_refuse_audit_change()")
