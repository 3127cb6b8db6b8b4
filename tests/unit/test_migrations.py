"""The migrations build the schema on SQLite and PostgreSQL, and match the models."""

from flask_migrate import check, upgrade
from sqlalchemy import inspect

from tests.fixtures.app import app_environ
from webapp import create_app
from webapp.extensions import db

EXPECTED_TABLES = {
    "users", "api_tokens", "organisation", "companies", "products", "seats", "monthly_counts",
    "count_overrides", "integrations", "product_mappings", "company_mappings", "sync_runs",
    "line_results", "push_intents", "audit_events",
}


def test_migrations_build_the_schema_on_sqlite(tmp_path):
    app = create_app(environ=app_environ(f"sqlite:///{tmp_path / 'fresh.sqlite3'}", str(tmp_path)))
    with app.app_context():
        upgrade()
        assert set(inspect(db.engine).get_table_names()) >= EXPECTED_TABLES
        check()  # raises if the models hold a change no migration describes


def test_migrations_build_the_schema_on_the_suite_database(app):
    # The session's database (PostgreSQL on CI) was built by `upgrade()` in the fixtures.
    assert set(inspect(db.engine).get_table_names()) >= EXPECTED_TABLES
    check()
