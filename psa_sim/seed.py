"""Seed data shared by the four simulated PSAs: the same customers, products and agreements in each.

The demo set uses the same company and product names as SeatSync's `flask seed-demo`, so that
"Suggest matches" finds them; `companies=N` generates N customers for tests and benchmarks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Credentials each simulated PSA accepts (field names as in each client's credential form).
SIM_CREDENTIALS = {
    "connectwise": {"company_id": "seatsync", "public_key": "sim-public", "private_key": "sim-private"},
    "autotask": {"username": "api@seatsync.test", "secret": "sim-secret", "integration_code": "SIMTRACKINGID"},
    "kaseya_bms": {"username": "api-user", "password": "sim-password", "company": "SeatSync Sim"},
    "halopsa": {"tenant": "seatsync", "client_id": "seatsync-sim", "client_secret": "sim-client-secret"},
}

DEMO_PRODUCTS = ["Password Manager Business", "Endpoint Backup", "Email Security", "Security Awareness Training"]
DEMO_COMPANIES = [
    "Acme Dental",
    "Bluebird Logistics",
    "Cedar Law Group",
    "Delta Architects",
    "Evergreen Clinic",
    "Foxtrot Freight",
    "Granite Accounting",
    "Harbor Marine Supply",
]


@dataclass
class SimCompany:
    name: str
    type: str = "Client"  # "Client" | "Prospect" | "Vendor"
    active: bool = True
    agreements: list[SimAgreement] = field(default_factory=list)


@dataclass
class SimAgreement:
    name: str
    active: bool = True
    lines: dict[str, int] = field(default_factory=dict)  # product name -> quantity


@dataclass
class Dataset:
    products: list[str]
    companies: list[SimCompany]


def demo_dataset() -> Dataset:
    companies = []
    for i, name in enumerate(DEMO_COMPANIES):
        lines = {DEMO_PRODUCTS[0]: 5 + i} if i % 2 == 0 else {}
        # The last one has a second active agreement (a product billed on another agreement than the default).
        extra = [SimAgreement(f"{name} — Separate Backup")] if i == len(DEMO_COMPANIES) - 1 else []
        companies.append(SimCompany(name, agreements=[
            SimAgreement(f"{name} — Managed Services", lines=lines),
            SimAgreement(f"{name} — Old agreement", active=False),
            *extra,
        ]))
    companies.append(SimCompany("Prospect Bakery", type="Prospect"))
    companies.append(SimCompany("Some Vendor Inc", type="Vendor"))
    companies.append(SimCompany("Closed Customer LLC", active=False))
    return Dataset(list(DEMO_PRODUCTS), companies)


def generated_dataset(count: int, products: list[str] | None = None, rng_seed: int = 7) -> Dataset:
    rng = random.Random(rng_seed)
    products = products or DEMO_PRODUCTS[:3]
    companies = [
        SimCompany(f"Customer {i:05d}", agreements=[SimAgreement(
            f"Customer {i:05d} — Managed Services",
            lines={p: rng.randint(1, 50) for p in products if rng.random() < 0.5},
        )])
        for i in range(count)
    ]
    return Dataset(list(products), companies)


def seed_all(state, companies="demo", products: list[str] | None = None) -> dict:
    from .server import PSA_MODULES

    dataset = demo_dataset() if companies == "demo" else generated_dataset(int(companies), products)
    with state.lock:
        for kind, module in PSA_MODULES.items():
            state.data[kind] = module.empty_state()
            module.seed(state.data[kind], dataset)
    return {"companies": len(dataset.companies), "products": len(dataset.products)}
