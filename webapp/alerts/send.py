"""Sending one message to one channel: SMTP e-mail, Teams and Slack incoming webhooks, signed webhooks.

Webhooks go through the PSA HTTP layer (webapp/psa_clients/http.py): public HTTPS hosts only (hosts
in PSA_DEV_HOSTS as typed, over HTTP), the connection pinned to the checked address, no redirects, no
proxies from the environment. The generic webhook is signed per Standard Webhooks with the reference
library. Errors say what happened in our words; no URL, secret or answer body is kept.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from flask import current_app
from standardwebhooks import Webhook

from ..connections import dev_hosts
from ..models._types import utcnow
from ..psa_clients import HostRefused, PsaError
from ..psa_clients.http import PsaHttp, RetryPolicy
from ..psa_clients.scrub import Scrubber

TIMEOUT = (5.0, 15.0)
SMTP_PORTS = {"smtp": 587, "smtps": 465, "smtp+plain": 25}


class DeliveryError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Message:
    id: str  # webhook-id: the same on every retry of one delivery
    kind: str  # event kind, "test" or "digest"
    severity: str
    title: str
    text: str
    data: dict = field(default_factory=dict)


def send(kind: str, target: dict, message: Message) -> int:
    """Send; returns the answer's status (SMTP: 250). Raises DeliveryError."""
    scrub = Scrubber(*(v for v in target.values() if isinstance(v, str)))
    try:
        if kind == "email":
            return send_mail(target["to"], message)
        return post_json(target["url"], *_body_and_headers(kind, target, message))
    except DeliveryError as error:
        raise DeliveryError(scrub(error.message)[:500], error.status) from None


def _body_and_headers(kind: str, target: dict, message: Message) -> tuple[str, dict]:
    if kind == "slack":
        return json.dumps({"text": f"*{message.title}*\n{message.text}"}), {}
    if kind == "teams":  # an Adaptive Card: what Teams workflows ("incoming webhook") accept
        card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                "version": "1.4", "body": [
                    {"type": "TextBlock", "text": message.title, "weight": "Bolder", "wrap": True},
                    {"type": "TextBlock", "text": message.text, "wrap": True}]}
        return json.dumps({"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}), {}
    now = utcnow()
    body = json.dumps({"type": message.kind, "timestamp": now.isoformat(),
                       "data": {"severity": message.severity, "title": message.title, "text": message.text,
                                **message.data}})
    signature = Webhook(target["secret"]).sign(message.id, now, body)
    return body, {"webhook-id": message.id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": signature}


def post_json(url: str, body: str, headers: dict) -> int:
    http = PsaHttp(dev_hosts=dev_hosts(), policy=RetryPolicy(attempts=1), timeout=TIMEOUT)
    try:
        response = http.request("POST", url, data=body.encode(), idempotent=False, endpoint="alert",
                                headers={"Content-Type": "application/json", **headers})
    except HostRefused as error:
        raise DeliveryError(error.psa_message, error.status) from None
    except PsaError as error:
        raise DeliveryError(f"The receiver answered HTTP {error.status}." if error.status else
                            "The receiver could not be reached or did not answer in time.", error.status) from None
    finally:
        http.close()
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"The receiver answered HTTP {response.status_code}.", response.status_code)
    return response.status_code


def check_url(url: str) -> None:
    """Refuse a webhook URL the host rules do not allow (raises HostRefused with words for the form)."""
    http = PsaHttp(dev_hosts=dev_hosts())
    try:
        http.check_url(url)
    finally:
        http.close()


def send_mail(recipients: list[str], message: Message) -> int:
    url = current_app.config.get("SMTP_URL")
    if not url:
        raise DeliveryError("No mail server is configured: set SMTP_URL (or SMTP_HOST) on the server.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SMTP_PORTS or not parts.hostname:
        raise DeliveryError("SMTP_URL must read smtp://, smtps:// or smtp+plain://host[:port].")
    mail = EmailMessage()
    mail["From"] = current_app.config["MAIL_FROM"]
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = f"[SeatSync] {message.title}"
    mail.set_content(f"{message.text}\n\n— SeatSync ({message.kind}, {message.severity})\n")
    opener = smtplib.SMTP_SSL if scheme == "smtps" else smtplib.SMTP
    kwargs = {"context": ssl.create_default_context()} if scheme == "smtps" else {}
    try:
        with opener(parts.hostname, parts.port or SMTP_PORTS[scheme], timeout=TIMEOUT[1], **kwargs) as smtp:
            if scheme == "smtp":
                smtp.starttls(context=ssl.create_default_context())
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(mail)
    except smtplib.SMTPResponseException as error:
        raise DeliveryError(f"The mail server answered {error.smtp_code}.", error.smtp_code) from None
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryError(f"The mail server could not be reached ({type(error).__name__}).") from None
    return 250
