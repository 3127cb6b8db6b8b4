"""Users, roles and API tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from flask_login import UserMixin
from sqlalchemy import ForeignKey, String
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ._types import UtcDateTime, utcnow

ROLES = ("viewer", "billing", "admin")  # each role can do everything the ones before it can

_dummy_hash: str | None = None


def password_matches(stored_hash: str | None, password: str) -> bool:
    """Whether `password` matches; always hashes once, so an unknown account or one without a
    password answers in the same time as a wrong password (no account enumeration by timing)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = generate_password_hash(secrets.token_urlsafe(16))
    matched = check_password_hash(stored_hash or _dummy_hash, password)
    return bool(stored_hash) and matched


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(20), default="viewer")
    active: Mapped[bool] = mapped_column(default=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), unique=True)
    # An admin who may still sign in with a password when the organisation disables local sign-in.
    break_glass: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # Bumped to end every session of the user (deactivation, password reset).
    session_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return password_matches(self.password_hash, password)

    def has_role(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"


class ApiToken(db.Model):
    """A token for /api/v1. Only its SHA-256 is stored; the token is shown once at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # shown in the UI to tell tokens apart
    scope: Mapped[str] = mapped_column(String(10), default="read")  # "read" | "write"
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    created_by: Mapped[User | None] = relationship()

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, name: str, scope: str, created_by: User | None) -> tuple[ApiToken, str]:
        token = "ss_" + secrets.token_urlsafe(32)
        row = cls(name=name, scope=scope, token_hash=cls.hash(token), prefix=token[:10], created_by=created_by)
        return row, token

    def allows(self, scope: str) -> bool:
        return self.revoked_at is None and (self.scope == "write" or scope == "read")
