"""Bearer tokens of the PSAs that log in (Kaseya BMS, HaloPSA): kept per client, shared by every worker.

Every worker's client of one tenant shares the token through Redis, encrypted with the app's
credential key (config TOKEN_CIPHER), so a sync of many companies logs in once, not once per job. Only
the token is shared, never the password or client secret; without Redis or the cipher nothing is.
"""

from __future__ import annotations

import hashlib
import json
import time

from cryptography.fernet import InvalidToken


class BearerToken:
    """An access token (and refresh token, if the PSA has one) with its expiry. Never printable."""

    __slots__ = ("access", "refresh", "expires_at", "margin")

    def __init__(self, access: str, refresh: str, expires_at: float, margin: float):
        self.access, self.refresh, self.expires_at, self.margin = access, refresh, expires_at, margin

    @classmethod
    def lasting(cls, access: str, refresh: str, expires_at: float, *, margin: float) -> BearerToken:
        """A token refreshed `margin` seconds before it expires (a quarter of its life, if that is shorter)."""
        return cls(access, refresh, expires_at, min(margin, max(0.0, expires_at - time.time()) / 4))

    def fresh(self) -> bool:
        return time.time() < self.expires_at - self.margin

    def __repr__(self) -> str:
        return "<bearer token>"


class SharedTokens:
    """The token of one tenant and login, in Redis under `seatsync:<kind>:token:<hash of the identity>`."""

    def __init__(self, redis, cipher, kind: str, identity: str):
        self.redis, self.cipher = redis, cipher
        self.key = f"seatsync:{kind}:token:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.cipher is not None

    def save(self, token: BearerToken | None) -> None:
        ttl = int(token.expires_at - token.margin - time.time()) if token else 0
        if not self.enabled or ttl <= 0:
            return
        value = json.dumps({"access": token.access, "refresh": token.refresh, "expires_at": token.expires_at,
                            "margin": token.margin})
        self.redis.set(self.key, self.cipher.encrypt(value.encode()), ex=ttl)

    def load(self) -> BearerToken | None:
        if not self.enabled:
            return None
        raw = self.redis.get(self.key)
        if not raw:
            return None
        try:
            data = json.loads(self.cipher.decrypt(raw))
            token = BearerToken(data["access"], data["refresh"], float(data["expires_at"]), float(data["margin"]))
        except (InvalidToken, ValueError, KeyError, TypeError):  # e.g. written under a retired key
            return None
        return token if token.fresh() else None

    def drop(self, refused: BearerToken | None) -> None:
        """Forget the shared token the PSA refused, unless another worker has replaced it meanwhile."""
        if refused is None or self.redis is None:
            return
        shared = self.load()
        if shared is not None and shared.access == refused.access:
            self.redis.delete(self.key)
