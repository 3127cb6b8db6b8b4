"""HaloPSA: recurring invoices, their lines and items (the shared screens, in its words)."""

from .integrations import PsaWords, psa_blueprint

bp = psa_blueprint("halopsa", PsaWords(
    agreement="recurring invoice",
    line="recurring invoice line",
    product="item",
    agreement_rule="Only the company's recurring invoices that are not disabled are listed.",
    product_help="Items are created in HaloPSA under Configuration › Items; lines whose quantity Halo "
                 "computes (from users, licences or assets) are never overwritten.",
))
