"""Look-ups the simulator tests of every PSA share."""


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
