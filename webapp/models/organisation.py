"""Organisation-wide settings (a single row)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Organisation(db.Model):
    __tablename__ = "organisation"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="My MSP")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")  # IANA name; months are counted in it
    cw_client_id: Mapped[str] = mapped_column(String(64), default="")  # default ConnectWise Client ID
    local_login_disabled: Mapped[bool] = mapped_column(default=False)  # OIDC only, but break-glass admins

    @classmethod
    def get(cls) -> Organisation:
        org = db.session.get(cls, 1)
        if org is None:
            # First use: concurrent requests may all get here, so insert-if-absent instead of add().
            from flask import current_app
            from sqlalchemy.dialects import postgresql, sqlite

            dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
            db.session.execute(dialect.insert(cls).values(
                id=1, name="My MSP", cw_client_id="", local_login_disabled=False,
                timezone=current_app.config.get("ORG_TIMEZONE_DEFAULT", "UTC"),
            ).on_conflict_do_nothing(index_elements=["id"]))
            org = db.session.get(cls, 1)
        return org
