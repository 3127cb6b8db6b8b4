"""Sign-in with OpenID Connect (Microsoft Entra ID, Google, any standard provider).

Configured only by environment variables (OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
OIDC_ALLOWED_DOMAINS, OIDC_DEFAULT_ROLE). Authorization code flow with PKCE (S256), `state` and
`nonce`, done by authlib's Flask client; the ID token's signature, issuer, audience, expiry and nonce
are all checked before anyone is signed in.

Who may sign in: a user already known by the provider's subject; else an existing account with the
same e-mail, only when the provider says the address is verified (`email_verified: true`) and the
account is not linked to another subject (the subject is then linked); a new user is created with
OIDC_DEFAULT_ROLE only when OIDC_ALLOWED_DOMAINS names their domain — with no domain list, SSO signs
in existing users only, so a public provider (Google) never lets a stranger in. With OIDC_ROLE_MAP
(Entra ID app roles → SeatSync roles) the `roles` claim sets the role at every sign-in.
"""

from __future__ import annotations

import logging

import requests
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, current_app, flash, redirect, request, session, url_for
from flask_login import login_user
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError

from ..audit import record
from ..extensions import db
from ..models import User
from ..models._types import utcnow
from ..models.users import ROLES
from ..security import public
from .auth import next_page

log = logging.getLogger(__name__)

bp = Blueprint("oidc", __name__)

NEXT_KEY = "oidc_next"


class SignInRefused(Exception):
    """An SSO sign-in we refuse; the message is shown to the person as is."""


def is_configured(app=None) -> bool:
    config = (app or current_app).config
    return bool(config.get("OIDC_ISSUER") and config.get("OIDC_CLIENT_ID") and config.get("OIDC_CLIENT_SECRET"))


def _client():
    """authlib's client for the configured provider, built once per configuration (it caches discovery)."""
    config = current_app.config
    key = (config["OIDC_ISSUER"], config["OIDC_CLIENT_ID"], config["OIDC_CLIENT_SECRET"])
    cached = current_app.extensions.get("seatsync_oidc")
    if cached and cached[0] == key:
        return cached[1]
    oauth = OAuth(current_app)
    client = oauth.register(
        "sso",
        client_id=config["OIDC_CLIENT_ID"],
        client_secret=config["OIDC_CLIENT_SECRET"],
        server_metadata_url=config["OIDC_ISSUER"].rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256", "timeout": 10},
    )
    current_app.extensions["seatsync_oidc"] = (key, client)
    return client


@bp.app_context_processor
def sso_context():
    from ..models import Organisation

    def local_login_disabled() -> bool:
        return Organisation.get().local_login_disabled

    return {"sso_enabled": is_configured(), "local_login_disabled": local_login_disabled}


def _refuse(message: str, reason: str):
    log.warning("SSO sign-in refused: %s", reason)
    flash(message, "error")
    return redirect(url_for("auth.login"))


@bp.get("/login/sso")
@public
def start():
    if not is_configured():
        return _refuse("Single sign-on is not configured on this server.", "not configured")
    session[NEXT_KEY] = next_page(request.args.get("next"))
    try:
        return _client().authorize_redirect(url_for("oidc.callback", _external=True))
    except (requests.RequestException, ValueError, RuntimeError) as exc:
        return _refuse("The identity provider could not be reached. Try again in a minute, or ask your "
                       "administrator to check OIDC_ISSUER.", f"discovery failed: {exc.__class__.__name__}")


def _claims_options() -> dict:
    # authlib checks `aud` only through `azp`; demand our client id in the audience explicitly.
    client = _client()
    issuer = client.load_server_metadata().get("issuer") or current_app.config["OIDC_ISSUER"]
    return {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": current_app.config["OIDC_CLIENT_ID"]},
    }


CLAIM_MESSAGES = {
    "aud": "The identity provider's answer was meant for a different application (audience mismatch). "
           "Ask your administrator to check OIDC_CLIENT_ID.",
    "iss": "The identity provider's answer came from an unexpected issuer. Ask your administrator to check "
           "OIDC_ISSUER.",
    "nonce": "The sign-in answer was replayed or belongs to another sign-in (nonce mismatch). Start again.",
}


@bp.get("/login/sso/callback")
@public
def callback():
    if not is_configured():
        return _refuse("Single sign-on is not configured on this server.", "not configured")
    try:
        token = _client().authorize_access_token(claims_options=_claims_options())
    except MismatchingStateError:
        return _refuse("This sign-in answer does not belong to a sign-in started from this browser "
                       "(state mismatch). Start again from the sign-in page.", "state mismatch")
    except OAuthError as exc:
        return _refuse(f"The identity provider refused the sign-in: {exc.description or exc.error}.",
                       f"provider error {exc.error}")
    except ExpiredTokenError:
        return _refuse("The identity provider's ID token has expired. Check that this server's clock is right, "
                       "then sign in again.", "expired ID token")
    except ClaimError as exc:
        message = CLAIM_MESSAGES.get(exc.claim, f"The identity provider's ID token is invalid ({exc.claim}).")
        return _refuse(message, f"invalid claim {exc.claim}")
    except JoseError as exc:
        return _refuse("The identity provider's ID token could not be verified (signature).",
                       f"ID token: {exc.__class__.__name__}")
    except requests.RequestException as exc:
        return _refuse("The identity provider could not be reached. Try again in a minute.",
                       f"token endpoint: {exc.__class__.__name__}")
    claims = token.get("userinfo")
    if not claims:
        return _refuse("The identity provider did not send an ID token.", "no ID token")
    try:
        user, created = _user_for(claims)
    except SignInRefused as exc:
        return _refuse(str(exc), str(exc))
    login_user(user)
    user.last_login_at = utcnow()
    if created:
        record("user.created", user.email, f"Created at first single sign-on, role {user.role}",
               after={"email": user.email, "role": user.role, "via": "sso"}, actor=user.email)
    db.session.commit()
    return redirect(session.pop(NEXT_KEY, None) or url_for("dashboard.index"))


def _email_of(claims) -> str:
    email = (claims.get("email") or "").strip().lower()
    if not email or "@" not in email:
        raise SignInRefused("The identity provider did not send an e-mail address. Ask your administrator to "
                            "add the email claim to the SeatSync application.")
    if claims.get("email_verified") is False:
        raise SignInRefused(f"The identity provider has not verified {email}; SeatSync cannot sign you in with it.")
    allowed = current_app.config.get("OIDC_ALLOWED_DOMAINS") or []
    domain = email.rsplit("@", 1)[1]
    if allowed and domain not in allowed:
        raise SignInRefused(f"Accounts from {domain} may not sign in to SeatSync. Use your work account, or ask "
                            "your administrator to add the domain to OIDC_ALLOWED_DOMAINS.")
    return email


def _existing_user_by_email(email: str, subject: str, claims) -> User | None:
    """The account an identity new to SeatSync may take over: only with the provider's word that the
    e-mail is the person's (Microsoft Entra ID, for one, sends no `email_verified` by default, and lets
    tenant admins set any address), and never one already linked to another identity."""
    user = db.session.scalar(db.select(User).filter(db.func.lower(User.email) == email))
    if user is None:
        return None
    if user.oidc_subject and user.oidc_subject != subject:
        raise SignInRefused(f"{email} is linked to a different single sign-on identity. Ask an administrator.")
    if claims.get("email_verified") is not True:
        raise SignInRefused(f"{email} already has a SeatSync account, and the identity provider did not confirm "
                            "that this e-mail address is verified (email_verified), so single sign-on cannot "
                            "link to it. Sign in with your password, or ask an administrator.")
    return user


def _mapped_role(claims) -> str | None:
    """The highest SeatSync role the provider's app roles (`roles` claim) map to, when OIDC_ROLE_MAP is set."""
    role_map = current_app.config.get("OIDC_ROLE_MAP") or {}
    if not role_map:
        return None
    roles = claims.get("roles") or []
    mapped = [role_map[name] for name in roles if isinstance(name, str) and name in role_map]
    if not mapped:
        raise SignInRefused("You have no SeatSync role in your organisation's identity provider. Ask your "
                            "administrator to assign you a SeatSync app role.")
    return max(mapped, key=ROLES.index)


def _new_user(email: str, claims, role: str | None) -> User:
    if not current_app.config.get("OIDC_ALLOWED_DOMAINS"):
        raise SignInRefused(f"There is no SeatSync account for {email}. Ask an administrator to invite you.")
    default = current_app.config.get("OIDC_DEFAULT_ROLE")
    role = role or (default if default in ROLES else "viewer")
    user = User(email=email, name=(claims.get("name") or "")[:200], role=role, active=True, session_version=1)
    db.session.add(user)
    return user


def _apply_role(user: User, role: str | None) -> None:
    if role is None or role == user.role:
        return
    record("user.role_changed", user.email, f"Role {user.role} → {role} from the identity provider's app roles",
           before={"role": user.role}, after={"role": role}, actor=user.email)
    user.role = role
    if role != "admin":
        user.break_glass = False


def _user_for(claims) -> tuple[User, bool]:
    email = _email_of(claims)
    subject = claims.get("sub")
    if not subject:
        raise SignInRefused("The identity provider did not send a subject (sub) claim.")
    role = _mapped_role(claims)
    user = db.session.scalar(db.select(User).filter_by(oidc_subject=subject)) or \
        _existing_user_by_email(email, subject, claims)
    created = user is None
    if created:
        user = _new_user(email, claims, role)
    if not user.active:
        raise SignInRefused("This account is deactivated. Ask an administrator to reactivate it.")
    if not created:
        _apply_role(user, role)
    user.oidc_subject = subject
    if not user.name and claims.get("name"):
        user.name = claims["name"][:200]
    db.session.flush()
    return user, created
