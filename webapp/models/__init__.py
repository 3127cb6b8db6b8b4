"""The data model, one module per aggregate (PRODUCT.md §1)."""

from .alerts import AlertEvent, Channel, Delivery
from .audit import AuditEvent
from .integrations import AgreementOverride, CompanyMapping, Integration, ProductMapping
from .organisation import Organisation
from .seats import Company, CountOverride, MonthlyCount, Product, Seat
from .sync import LineResult, PushIntent, SyncRun
from .users import ApiToken, User

__all__ = [
    "AgreementOverride",
    "AlertEvent",
    "Channel",
    "Delivery",
    "ApiToken",
    "AuditEvent",
    "Company",
    "CompanyMapping",
    "CountOverride",
    "Integration",
    "LineResult",
    "MonthlyCount",
    "Organisation",
    "Product",
    "ProductMapping",
    "PushIntent",
    "Seat",
    "SyncRun",
    "User",
]
