"""PSA clients behind one interface (base.PsaClient). `make_client` is the only way the app builds one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import (  # noqa: F401  (re-exported: the interface the app uses)
    Agreement,
    ComputedLine,
    CredentialsRejected,
    HostRefused,
    Line,
    NotFound,
    PermissionDenied,
    PsaClient,
    PsaError,
    PsaItem,
    RateLimited,
    TransientError,
    ValidationFailed,
    WriteOptions,
    WriteResult,
)

PSA_KINDS = ("connectwise", "autotask", "kaseya_bms", "halopsa")


def client_class(kind: str) -> type[PsaClient]:
    if kind == "connectwise":
        from .connectwise import ConnectWiseClient as cls
    elif kind == "autotask":
        from .autotask import AutotaskClient as cls
    elif kind == "kaseya_bms":
        from .kaseya_bms import KaseyaBmsClient as cls
    elif kind == "halopsa":
        from .halopsa import HaloPsaClient as cls
    else:
        raise ValueError(f"unknown PSA kind {kind!r}")
    return cls


def make_client(
    kind: str,
    credentials: Mapping[str, Any],
    *,
    redis=None,
    dev_hosts: frozenset[str] = frozenset(),
    config: Mapping[str, Any] | None = None,
) -> PsaClient:
    """Build the client of one PSA tenant.

    `credentials` are the decrypted values of the integration's credential form (field names as in
    each client's CREDENTIAL_FIELDS). `redis` shares rate limits across workers (None: no shared
    limits, for unit tests). `config` holds app settings a client may need (CW_CLIENT_ID,
    AUTOTASK_ZONE_URL).
    """
    from .http import request_tally

    client = client_class(kind)(dict(credentials), redis=redis, dev_hosts=dev_hosts, config=dict(config or {}))
    client.http.tally = request_tally(redis, kind)  # every answer counted for /metrics
    return client
