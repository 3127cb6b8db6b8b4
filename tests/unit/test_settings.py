import os
import stat

import pytest

from webapp import create_app
from webapp.settings import ConfigurationError, load_settings


def test_embedded_default_uses_sqlite_and_an_in_process_queue(tmp_path):
    settings = load_settings(str(tmp_path), environ={})
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'seatsync.sqlite3'}"
    assert settings["EMBEDDED_QUEUE"] is True
    assert settings["PRODUCTION"] is False


def test_embedded_default_generates_its_secrets_once_and_keeps_them_private(tmp_path):
    first = load_settings(str(tmp_path), environ={})
    second = load_settings(str(tmp_path), environ={})
    assert first["SECRET_KEY"] == second["SECRET_KEY"] and len(first["SECRET_KEY"]) > 40
    assert first["ENCRYPTION_KEYS"] == second["ENCRYPTION_KEYS"]
    for name in ("secret_key", "encryption_key"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_database_and_redis_urls_switch_to_postgresql_and_a_real_queue(tmp_path):
    settings = load_settings(str(tmp_path), environ={"DATABASE_URL": "postgres://u@db/seatsync",
                                                      "REDIS_URL": "redis://cache:6379/0"})
    assert settings["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/seatsync"
    assert settings["EMBEDDED_QUEUE"] is False
    assert settings["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/0"


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ENCRYPTION_KEY", "DATABASE_URL"])
def test_production_refuses_to_start_without_a_secret_and_names_it(tmp_path, missing):
    environ = {"SEATSYNC_ENV": "production", "SECRET_KEY": "s", "ENCRYPTION_KEY": "k",
               "DATABASE_URL": "postgresql://db/x"}
    del environ[missing]
    with pytest.raises(ConfigurationError, match=missing):
        create_app(environ={**environ, "SEATSYNC_INSTANCE": str(tmp_path)})
    assert not (tmp_path / "secret_key").exists()


def test_production_cookies_are_secure(tmp_path):
    settings = load_settings(str(tmp_path), environ={"SEATSYNC_ENV": "production", "SECRET_KEY": "s",
                                                      "ENCRYPTION_KEY": "k", "DATABASE_URL": "postgresql://db/x"})
    assert settings["SESSION_COOKIE_SECURE"] and settings["SESSION_COOKIE_HTTPONLY"]
    assert settings["SESSION_COOKIE_SAMESITE"] == "Lax"
