"""Autotask: Recurring Service contracts, contract services and services (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("autotask", PsaWords(
    agreement="contract",
    line="contract service",
    product="service",
    agreement_rule="Only active Recurring Service contracts of the company are listed.",
    product_help="Services are created in Autotask under Admin > Products & Services > Services.",
))
