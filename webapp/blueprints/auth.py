"""Sign-in with local accounts (OIDC is added by its own issue)."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired

from ..extensions import db, limiter, login_manager
from ..models import Organisation, User
from ..models._types import utcnow
from ..models.users import password_matches
from ..security import any_signed_in_user, public, safe_next, session_identifier

bp = Blueprint("auth", __name__)

login_manager.login_view = "auth.login"
login_manager.session_protection = "strong"
# Flask-Login binds a session to an address it reads from X-Forwarded-For, which any client can send;
# ours uses the address the proxy setting (TRUSTED_PROXIES) resolved.
login_manager._session_identifier_generator = session_identifier

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


def next_page(target: str | None) -> str:
    return safe_next(target, url_for("dashboard.index"))


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _account_login_limit() -> str:
    return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]


def _account_key() -> str:
    # Keyed by the e-mail typed, whether or not it has an account: the limit reveals nothing.
    return "login-account:" + (request.form.get("email") or "").strip().lower()[:320]


def _failed(response) -> bool:
    return response.status_code != 302


TOO_MANY = "Too many sign-in attempts. Wait a minute and try again."


@bp.route("/login", methods=["GET", "POST"])
@public
@limiter.limit(_login_limit, methods=["POST"], error_message=TOO_MANY)
# Per account, only failures count: guessing one account's password from many addresses is bounded,
# and its owner signing in does not use up the budget.
@limiter.limit(_account_login_limit, key_func=_account_key, methods=["POST"], deduct_when=_failed,
               error_message=TOO_MANY)
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(db.select(User).filter_by(email=form.email.data.strip().lower()))
        # Hashes once even for an unknown account, so the answer takes the same time either way.
        matched = password_matches(user.password_hash if user else None, form.password.data)
        if user is not None and user.active and matched:
            if Organisation.get().local_login_disabled and not (user.break_glass and user.role == "admin"):
                # Said only after the password matched, so it reveals nothing about who has an account.
                flash(LOCAL_DISABLED, "error")
                return render_template("auth/login.html", form=form), 403
            login_user(user, remember=form.remember.data)
            user.last_login_at = utcnow()
            db.session.commit()
            return redirect(next_page(request.args.get("next")))
        # The same words whether the e-mail exists or not: no account enumeration.
        flash(GENERIC_FAILURE, "error")
        return render_template("auth/login.html", form=form), 401
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
@any_signed_in_user
def logout():
    # Ends every session of the user, here and elsewhere: a copied session or remember-me cookie
    # carries the old session version and no longer loads the user.
    current_user.session_version += 1
    db.session.commit()
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
