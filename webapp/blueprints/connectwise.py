"""ConnectWise Manage: agreements, additions and catalog products (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("connectwise", PsaWords(
    agreement="agreement",
    line="addition",
    product="product",
    agreement_rule="Only active agreements of the company are listed.",
    decrease_date=("Only with Keep history: the current addition is cancelled on the last day of this month and a "
                   "new one with the lower quantity starts on the 1st of next month. Without Keep history ConnectWise "
                   "edits the quantity in place, which has no date: decreases then apply at once whatever you choose."),
    product_help="ConnectWise catalog products (bundles cannot be agreement additions).",
    keep_history=True,
))
