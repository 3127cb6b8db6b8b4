"""Autotask: Recurring Service contracts, contract services and services (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("autotask", PsaWords(
    agreement="contract",
    line="contract service",
    product="service",
    agreement_rule="Only active Recurring Service contracts of the company are listed.",
    decrease_date=("The decrease is posted as a contract service adjustment effective the 1st of next month: this "
                   "month's units (and invoice) stay as they are, the next period's units are lowered."),
    product_help="Services are created in Autotask under Admin > Products & Services > Services.",
))
