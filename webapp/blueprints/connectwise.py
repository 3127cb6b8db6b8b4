"""ConnectWise Manage: agreements, additions and catalog products (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("connectwise", PsaWords(
    agreement="agreement",
    line="addition",
    product="product",
    agreement_rule="Only active agreements of the company are listed.",
    product_help="ConnectWise catalog products (bundles cannot be agreement additions).",
    keep_history=True,
))
