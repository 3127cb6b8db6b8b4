"""PSA tokens a worker keeps in Redis are encrypted with the key of the saved credentials."""

from __future__ import annotations

from cryptography.fernet import Fernet

from tests.fixtures.integrations import connect
from tests.integration.psa_clients.helpers import sim_requests
from webapp.connections import client_for
from webapp.queue import get_redis


def test_the_kaseya_bms_token_a_worker_shares_is_encrypted_with_the_credential_key_and_reused(psa_app, psa_sim):
    integration = connect("kaseya_bms", psa_sim)
    redis = get_redis()
    for key in redis.scan_iter("seatsync:kaseya_bms:token:*"):
        redis.delete(key)
    logins = len(sim_requests(psa_sim, "kaseya_bms", "/security/authenticate"))

    first = client_for(integration)
    first.company_scope_options()
    client_for(integration).company_scope_options()  # another job's client: the shared token, no new login

    assert len(sim_requests(psa_sim, "kaseya_bms", "/security/authenticate")) == logins + 1
    (key,) = redis.scan_iter("seatsync:kaseya_bms:token:*")
    stored = redis.get(key)
    for clear in (first._token.access, first._token.refresh, '"access"'):
        assert clear.encode() not in stored
    current_key = Fernet(psa_app.config["ENCRYPTION_KEYS"][0].encode())
    assert b'"access"' in current_key.decrypt(stored)
