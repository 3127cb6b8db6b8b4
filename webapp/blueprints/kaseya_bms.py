"""Kaseya BMS: contracts, contract services and services (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("kaseya_bms", PsaWords(
    agreement="contract",
    line="contract service",
    product="service",
    agreement_rule="Only active contracts of the company are listed.",
    decrease_date=("The lower Units are posted with the 1st of next month as their EffectiveDate: this month's "
                   "invoice keeps the current Units."),
    product_help="Services are created in Kaseya BMS under Admin > Finance > Services.",
))
