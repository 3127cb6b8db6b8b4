"""What every benchmark needs: a throwaway PostgreSQL database built by the migrations, and an app on it."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import psycopg

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_ENCRYPTION_KEY = "YmVuY2gtb25seS1rZXktMzItYnl0ZXMtbG9uZy4uLi4="


@contextlib.contextmanager
def throwaway_database(keep: bool = False) -> Iterator[str]:
    """A new database, dropped afterwards (unless `keep`); yields its URL."""
    name = f"seatsync_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        if keep:
            print(f"kept {url}")
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_environ(url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "SECRET_KEY": "bench", "SEATSYNC_EMBEDDED_WORKER": "0",
            "ENCRYPTION_KEY": BENCH_ENCRYPTION_KEY, "SEATSYNC_INSTANCE": tempfile.mkdtemp(prefix="seatsync-bench-"),
            **extra}


def migrated_app(url: str, environ: dict[str, str] | None = None, **extra: str):
    """An app on `url` (with `environ` if given, e.g. one shared with worker processes), schema built by the
    real migrations."""
    from flask_migrate import upgrade

    from webapp import create_app

    app = create_app(environ=environ or bench_environ(url, **extra))
    with app.app_context():
        upgrade()
    return app


def run_sql(url: str, script: str, params: dict) -> None:
    """Run a `;`-separated script, giving each statement only the parameters it names."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
