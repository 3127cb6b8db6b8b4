"""Encryption at rest for PSA credentials (Fernet, rotatable via MultiFernet).

ENCRYPTION_KEY holds comma-separated keys: the first encrypts, every one decrypts. To rotate,
prepend a new key, run `flask rotate-encryption-key`, then drop the old key.
"""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

from .psa_clients.scrub import Scrubber

# Every secret this process decrypted: error reports (webapp/observability.py) mask them in every form.
DECRYPTED = Scrubber()


def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in current_app.config["ENCRYPTION_KEYS"]])


def cipher() -> MultiFernet:
    """The credential key as an object (`encrypt`/`decrypt` of bytes), for secrets kept outside the database."""
    return _fernet()


def encrypt_json(values: dict) -> str:
    return _fernet().encrypt(json.dumps(values).encode()).decode()


def decrypt_json(token: str | None) -> dict:
    if not token:
        return {}
    try:
        values = json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise RuntimeError("Stored credentials cannot be decrypted with the configured ENCRYPTION_KEY.") from None
    DECRYPTED.add(*(v for v in values.values() if isinstance(v, str)))
    return values


def rotate(token: str) -> str:
    return _fernet().rotate(token.encode()).decode()


def is_current(token: str) -> bool:
    """Whether the token was encrypted with the first (current) key."""
    try:
        Fernet(current_app.config["ENCRYPTION_KEYS"][0].encode()).decrypt(token.encode())
        return True
    except InvalidToken:
        return False
