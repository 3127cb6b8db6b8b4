"""Look-ups the simulator tests of every PSA share."""

import time

from psa_sim.seed import SIM_CREDENTIALS
from webapp.psa_clients import make_client
from webapp.psa_clients.http import RetryPolicy


def sim_requests(psa_sim, psa: str, path_part: str = "") -> list[dict]:
    """The requests the simulator logged for one PSA, optionally only those whose path contains `path_part`."""
    return [r for r in psa_sim.requests(psa) if path_part in r["path"]]


def company_id(client, name: str) -> str:
    (found,) = [c for c in client.list_companies() if c.name == name]
    return found.id


def managed_services(client, company: str) -> str:
    """The id of the demo company's one active agreement/contract."""
    (agreement,) = client.list_agreements(company_id(client, company))
    return agreement.id


def sim_client(kind: str, host_field: str, psa_sim, redis, *, sleeps: list | None = None, config=None, **overrides):
    """A client of the simulated PSA with the simulator's credentials (`overrides` replace some), short retries,
    and limits shared through `redis`; `sleeps` records every back-off (each slept for at most 10 ms)."""
    credentials = {host_field: psa_sim.host, **SIM_CREDENTIALS[kind], **overrides}
    config = {"HTTP_RETRY_POLICY": RetryPolicy(attempts=6, initial=0.01, maximum=1.0), **(config or {})}
    if sleeps is not None:
        config["HTTP_SLEEP"] = lambda seconds: (sleeps.append(seconds), time.sleep(min(seconds, 0.01)))
    return make_client(kind, credentials, redis=redis, dev_hosts=frozenset({psa_sim.host}), config=config)
