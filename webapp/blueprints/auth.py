"""Sign-in with local accounts (OIDC is added by its own issue)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired

from ..extensions import db, limiter, login_manager
from ..models import Organisation, User
from ..models._types import utcnow
from ..security import any_signed_in_user, public

bp = Blueprint("auth", __name__)

login_manager.login_view = "auth.login"
login_manager.session_protection = "strong"

GENERIC_FAILURE = "Wrong e-mail or password."
LOCAL_DISABLED = "Password sign-in is turned off for your account: use \"Sign in with SSO\"."


class LoginForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])
    remember = BooleanField("Keep me signed in")


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    # The id carries the session version: bumping it (deactivate, reset) ends every session.
    try:
        raw_id, version = user_id.split(":")
        user = db.session.get(User, int(raw_id))
    except (ValueError, TypeError):
        return None
    if user is None or not user.active or str(user.session_version) != version:
        return None
    return user


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("dashboard.index")


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


@bp.route("/login", methods=["GET", "POST"])
@public
@limiter.limit(_login_limit, methods=["POST"], error_message="Too many sign-in attempts. Wait a minute and try again.")
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(db.select(User).filter_by(email=form.email.data.strip().lower()))
        if user is not None and user.active and user.check_password(form.password.data):
            if Organisation.get().local_login_disabled and not (user.break_glass and user.role == "admin"):
                # Said only after the password matched, so it reveals nothing about who has an account.
                flash(LOCAL_DISABLED, "error")
                return render_template("auth/login.html", form=form), 403
            login_user(user, remember=form.remember.data)
            user.last_login_at = utcnow()
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))
        # The same words whether the e-mail exists or not: no account enumeration.
        flash(GENERIC_FAILURE, "error")
        return render_template("auth/login.html", form=form), 401
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
@any_signed_in_user
def logout():
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
