"""Users (admins only): invite, change role, deactivate, reset password, mark break-glass admins.

A generated password is rendered once in the answer to the request that made it — never flashed
(flashes travel in the signed, unencrypted session cookie) and never stored anywhere but as a hash.
Deactivating or resetting bumps the user's session version, which ends every session they have.
"""

from __future__ import annotations

import secrets

from email_validator import EmailNotValidError, validate_email
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..audit import record
from ..extensions import db
from ..models import User
from ..models.users import ROLES
from ..security import admin_only

bp = Blueprint("users", __name__, url_prefix="/users")


def _users():
    return db.session.scalars(db.select(User).order_by(User.active.desc(), User.email)).all()


def _page(status: int = 200, one_time: dict | None = None, form: dict | None = None):
    return render_template("users/index.html", users=_users(), roles=ROLES, one_time=one_time,
                           form=form or {}), status


def _get(user_id: int) -> User:
    return db.session.get(User, user_id) or abort(404)


def _active_admins() -> int:
    return db.session.scalar(db.select(db.func.count(User.id)).filter_by(role="admin", active=True))


def _refuse(message: str):
    flash(message, "error")
    return redirect(url_for("users.index"))


def _new_password() -> str:
    return secrets.token_urlsafe(12)


@bp.get("")
@admin_only
def index():
    return _page()


@bp.post("")
@admin_only
def create():
    form = {k: request.form.get(k, "").strip() for k in ("email", "name", "role")}
    try:
        email = validate_email(form["email"], check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        flash(f"E-mail address: {exc}", "error")
        return _page(422, form=form)
    if form["role"] not in ROLES:
        flash("Pick a role.", "error")
        return _page(422, form=form)
    if db.session.scalar(db.select(User).filter(db.func.lower(User.email) == email)):
        flash(f"{email} already has an account.", "error")
        return _page(422, form=form)
    user = User(email=email, name=form["name"][:200], role=form["role"], active=True, session_version=1)
    password = None
    if request.form.get("local_password"):
        password = _new_password()
        user.set_password(password)
    db.session.add(user)
    record("user.created", email, f"Invited as {user.role}" + (" with a password" if password else " (SSO only)"),
           after={"email": email, "role": user.role, "sign_in": "password or SSO" if password else "SSO only"})
    db.session.commit()
    one_time = {"email": email, "password": password} if password else None
    flash(f"{email} was added as {user.role}.", "success")
    return _page(one_time=one_time)


@bp.post("/<int:user_id>/role")
@admin_only
def change_role(user_id: int):
    user = _get(user_id)
    role = request.form.get("role", "")
    if role not in ROLES:
        return _refuse("Pick a role.")
    if role == user.role:
        return redirect(url_for("users.index"))
    if user.id == current_user.id:
        return _refuse("You cannot change your own role; ask another admin.")
    if user.role == "admin" and user.active and _active_admins() <= 1:
        return _refuse("SeatSync needs at least one active admin.")
    before = user.role
    user.role = role
    if role != "admin":
        user.break_glass = False
    record("user.role_changed", user.email, f"Role {before} → {role}", before={"role": before}, after={"role": role})
    db.session.commit()
    flash(f"{user.email} is now {role}.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/deactivate")
@admin_only
def deactivate(user_id: int):
    user = _get(user_id)
    if user.id == current_user.id:
        return _refuse("You cannot deactivate yourself.")
    if not user.active:
        return redirect(url_for("users.index"))
    if user.role == "admin" and _active_admins() <= 1:
        return _refuse("SeatSync needs at least one active admin.")
    user.active = False
    user.session_version += 1
    record("user.deactivated", user.email, "Deactivated; every session ended",
           before={"active": True}, after={"active": False})
    db.session.commit()
    flash(f"{user.email} is deactivated and signed out everywhere.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/reactivate")
@admin_only
def reactivate(user_id: int):
    user = _get(user_id)
    if user.active:
        return redirect(url_for("users.index"))
    user.active = True
    record("user.reactivated", user.email, "Reactivated", before={"active": False}, after={"active": True})
    db.session.commit()
    flash(f"{user.email} is active again.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/reset-password")
@admin_only
def reset_password(user_id: int):
    user = _get(user_id)
    password = _new_password()
    user.set_password(password)
    user.session_version += 1
    record("user.password_reset", user.email, "Password reset by an admin; every session ended")
    db.session.commit()
    flash(f"A new password was set for {user.email}; their sessions have ended.", "success")
    return _page(one_time={"email": user.email, "password": password})


@bp.post("/<int:user_id>/break-glass")
@admin_only
def break_glass(user_id: int):
    user = _get(user_id)
    wanted = request.form.get("break_glass") == "1"
    if wanted and user.role != "admin":
        return _refuse("Only admins can be break-glass accounts.")
    if wanted == user.break_glass:
        return redirect(url_for("users.index"))
    user.break_glass = wanted
    record("user.break_glass_changed", user.email,
           "May sign in with a password when local sign-in is disabled" if wanted else "No longer break-glass",
           before={"break_glass": not wanted}, after={"break_glass": wanted})
    db.session.commit()
    return redirect(url_for("users.index"))
