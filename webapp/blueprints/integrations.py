"""The integration screens, shared by the four PSAs.

`integrations.index` shows a tile per PSA. Each PSA has a thin blueprint of its own (connectwise.py,
autotask.py, kaseya_bms.py, halopsa.py) built by `psa_blueprint(kind, words)`: the same views, bound to one
integration, speaking that PSA's words (agreement vs contract, product vs service). Credential
fields come from the client class, so nothing here branches on the PSA kind.

When an integration is disabled, SeatSync never contacts that PSA on its own: pages render from what
is saved and cached, syncs and schedules don't run. Only buttons an admin presses themself
(Authenticate, loading a list, the company picker) read from the PSA, so everything stays editable.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import and_, func, or_

from .. import audit
from ..connections import client_for, credential_view, get_integration, merge_credentials, save_credentials
from ..extensions import db, htmx
from ..inputs import db_int, page_number
from ..models import (
    AgreementOverride,
    Company,
    CompanyMapping,
    Integration,
    LineResult,
    Product,
    ProductMapping,
    SyncRun,
)
from ..models._types import utcnow
from ..psa_clients import PSA_KINDS, PsaError, ValidationFailed, client_class
from ..queue import get_redis
from ..responses import htmx_answer
from ..security import admin_only, safe_next
from ..sync import (
    ACTIVE_RUN,
    BUSY,
    CompanyStatus,
    QuantityRule,
    SyncUnavailable,
    mapping_edited,
    shown_status,
    unavailable_reason,
)
from ..sync import start_sync as engine_start_sync
from ..sync.schedule import next_slot
from ..timezones import org_zone

bp = Blueprint("integrations", __name__, url_prefix="/integrations")

PAGE_SIZE = 50
CACHE_SECONDS = 300  # PSA lists (products, company types) change rarely; Refresh fetches them again
LIVE_STATUSES = BUSY
LIVE_RUN_STATES = ACTIVE_RUN
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FILTERS = OrderedDict([
    ("", "All companies"),
    ("unmapped", "Unmapped"),
    ("attention", "Needs attention"),
    ("error", "Error"),
    ("excluded", "Excluded"),
])
SUGGEST_LIMIT = 50  # each proposal costs one agreements lookup; the admin confirms in rounds
# Quantity rules of a product mapping, as the product mappings form names them (webapp/sync/plan.py).
RULE_FIELDS = (("included", "Included"), ("minimum", "Minimum"), ("maximum", "Maximum"), ("extra", "Extra"))
RULE_LIMIT = 1_000_000  # far above any seat count; keeps the values in an integer column


@dataclass(frozen=True)
class PsaWords:
    """How a PSA names the things SeatSync maps: the only per-PSA text the shared screens use."""

    agreement: str  # "agreement" | "contract"
    line: str  # "addition" | "contract service"
    product: str  # "product" | "service"
    agreement_rule: str  # which agreements the picker offers
    product_help: str = ""
    keep_history: bool = False  # the PSA can cancel a line and add a new one (ConnectWise)
    decrease_date: str = ""  # how a decrease deferred to the next period is written, in the PSA's words

    @property
    def an_agreement(self) -> str:
        return f"{'an' if self.agreement[:1] in 'aeiou' else 'a'} {self.agreement}"


WORDS: dict[str, PsaWords] = {}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def display_name(kind: str) -> str:
    return client_class(kind).display_name


def can_edit() -> bool:
    return current_user.is_authenticated and current_user.has_role("billing")


def is_admin() -> bool:
    return current_user.is_authenticated and current_user.has_role("admin")


@contextmanager
def psa(integration: Integration, credentials: dict[str, str] | None = None):
    client = client_for(integration, credentials)
    try:
        yield client
    finally:
        client.close()


def _cache_key(integration: Integration, name: str) -> str:
    return f"seatsync:psa-lists:{integration.kind}:{integration.id}:{name}"


def cached_list(integration: Integration, name: str, fetch: Callable[[Any], Any], *, refresh: bool = False,
                allow_fetch: bool = True) -> Any:
    """A PSA list from Redis, or fetched (and cached briefly). None when not cached and not fetched."""
    redis = get_redis()
    key = _cache_key(integration, name)
    if not refresh:
        raw = redis.get(key)
        if raw:
            return json.loads(raw)
    if not allow_fetch:
        return None
    with psa(integration) as client:
        value = fetch(client)
    redis.set(key, json.dumps(value), ex=CACHE_SECONDS)
    return value


def forget_lists(integration: Integration) -> None:
    redis = get_redis()
    for name in ("products", "scope"):
        redis.delete(_cache_key(integration, name))


def _items(items) -> list[dict[str, str]]:
    return [{"id": i.id, "name": i.name, "detail": i.detail} for i in items]


def psa_products(integration: Integration, *, refresh: bool = False, explicit: bool = False):
    return cached_list(integration, "products", lambda c: _items(c.list_products()), refresh=refresh,
                       allow_fetch=integration.enabled or explicit or refresh)


def scope_options(integration: Integration, *, refresh: bool = False, explicit: bool = False):
    def fetch(client):
        options = client.company_scope_options()
        return {"types": _items(options.get("types", [])), "statuses": _items(options.get("statuses", []))}

    return cached_list(integration, "scope", fetch, refresh=refresh,
                       allow_fetch=integration.enabled or explicit or refresh)


def scope_filter(integration: Integration) -> dict[str, list[str]]:
    scope = integration.scope or {}
    return {"type_ids": list(scope.get("type_ids") or []), "status_ids": list(scope.get("status_ids") or [])}


def next_run(integration: Integration, now: dt.datetime | None = None) -> dt.datetime | None:
    """The next slot of the schedule, shown even while disabled (the page says it will be skipped)."""
    return next_slot(integration.schedule_kind, integration.schedule_time or dt.time(2, 0),
                     integration.schedule_weekday, org_zone(), now or utcnow())


def sync_blocker(integration: Integration) -> str | None:
    """Why Sync now cannot run, shown next to the disabled button (None: it can)."""
    return unavailable_reason(integration)


def start_sync(integration: Integration, trigger: str, mapping: CompanyMapping | None = None):
    """(run, None) or (None, the reason it cannot start). The engine decides; we only show its reason."""
    try:
        run = engine_start_sync(integration, trigger=trigger, user=current_user._get_current_object(),
                                company_mapping=mapping)
    except SyncUnavailable as exc:
        db.session.rollback()
        return None, exc.reason
    target = mapping.company.name if mapping is not None else "all companies"
    audit.record("sync.requested", integration.kind, f"Sync now for {target}")
    db.session.commit()
    return run, None


def latest_run(integration: Integration) -> SyncRun | None:
    if integration.id is None:
        return None
    return db.session.scalar(
        db.select(SyncRun).where(SyncRun.integration_id == integration.id, SyncRun.company_mapping_id.is_(None))
        .order_by(SyncRun.created_at.desc(), SyncRun.id.desc()).limit(1)
    )


def display_status(mapping: CompanyMapping | None, integration: Integration | None = None) -> CompanyStatus:
    return shown_status(mapping, integration.enabled if integration is not None else True)


# --------------------------------------------------------------------------------------------------
# Company mapping table: one query, LEFT OUTER JOIN companies -> company_mappings, LIMIT/OFFSET
# --------------------------------------------------------------------------------------------------
@dataclass
class CompanyPage:
    rows: list[tuple[Company, CompanyMapping | None]]
    total: int
    page: int
    pages: int


def company_page(integration: Integration, search: str = "", flt: str = "", page: int = 1) -> CompanyPage:
    joined = and_(CompanyMapping.company_id == Company.id, CompanyMapping.integration_id == integration.id)
    excluded = func.coalesce(CompanyMapping.excluded, False)
    conditions = [Company.active.is_(True)]
    if search.strip():
        conditions.append(func.lower(Company.name).contains(search.strip().lower(), autoescape=True))
    if flt == "unmapped":
        conditions += [or_(CompanyMapping.psa_company_id.is_(None), CompanyMapping.agreement_id.is_(None)),
                       excluded.is_(False)]
    elif flt == "attention":
        conditions += [CompanyMapping.status == CompanyStatus.NEEDS_ATTENTION, excluded.is_(False)]
    elif flt == "error":
        conditions += [CompanyMapping.status == CompanyStatus.ERROR, excluded.is_(False)]
    elif flt == "excluded":
        conditions.append(excluded.is_(True))
    page = max(1, page)
    stmt = (
        db.select(Company, CompanyMapping, func.count().over().label("total"))
        .outerjoin(CompanyMapping, joined)
        .where(*conditions)
        .order_by(func.lower(Company.name), Company.id)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    )
    result = db.session.execute(stmt).all()
    if result:
        total = result[0].total
    else:  # past the last page (or nothing matches): count without the window
        total = db.session.scalar(db.select(func.count()).select_from(Company).outerjoin(CompanyMapping, joined)
                                  .where(*conditions))
    pages = max(1, -(-total // PAGE_SIZE))
    return CompanyPage([(r[0], r[1]) for r in result], total, page, pages)


def mapping_for(integration: Integration, company: Company, *, create: bool = False) -> CompanyMapping | None:
    mapping = db.session.scalar(db.select(CompanyMapping).filter_by(integration_id=integration.id,
                                                                   company_id=company.id))
    if mapping is None and create:
        mapping = CompanyMapping(integration=integration, company=company)
        db.session.add(mapping)
    return mapping


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _context(integration: Integration, **extra) -> dict[str, Any]:
    kind = integration.kind

    def ep(name: str, **values) -> str:
        return url_for(f"{kind}.{name}", **values)

    return {
        "integration": integration,
        "kind": kind,
        "psa_name": display_name(kind),
        "words": WORDS[kind],
        "ep": ep,
        "can_edit": can_edit(),
        "is_admin": is_admin(),
        "display_status": display_status,
        "live_statuses": LIVE_STATUSES,
        "live_run_states": LIVE_RUN_STATES,
        "runs_url": url_for("runs.index", psa=kind) if "runs.index" in current_app.view_functions else None,
        "org_timezone": org_zone().key,
        "rule_fields": RULE_FIELDS,
        **extra,
    }


def settings_context(integration: Integration, *, refresh: bool = False, **extra) -> dict[str, Any]:
    fields = client_class(integration.kind).credential_fields
    saved = credential_view(integration)
    context = {
        "fields": fields,
        "saved": saved,
        "typed": extra.pop("typed", None) or {f.name: saved.get(f.name, "") for f in fields if not f.secret},
        "blocker": sync_blocker(integration),
        "next_run": next_run(integration),
        "weekdays": WEEKDAYS,
        "run": latest_run(integration),
    }
    if integration.has_credentials:
        context.update(product_section(integration, refresh=refresh))
        context.update(scope_section(integration))
    context.update(extra)
    return _context(integration, **context)


def product_section(integration: Integration, *, refresh: bool = False, explicit: bool = False) -> dict[str, Any]:
    error = None
    try:
        options = psa_products(integration, refresh=refresh, explicit=explicit)
    except PsaError as exc:
        options, error = None, exc
    products = db.session.scalars(db.select(Product).where(Product.active.is_(True)).order_by(Product.name)).all()
    mapped = {m.product_id: m for m in integration.product_mappings} if integration.id else {}
    return {"products": products, "mapped": mapped, "psa_products": options, "products_error": error}


def scope_section(integration: Integration, *, refresh: bool = False, explicit: bool = False) -> dict[str, Any]:
    error = None
    try:
        options = scope_options(integration, refresh=refresh, explicit=explicit)
    except PsaError as exc:
        options, error = None, exc
    return {"scope_options": options, "scope": scope_filter(integration), "scope_error": error}


def render_settings(integration: Integration, **extra):
    context = settings_context(integration, **extra)
    template = "integrations/_settings.html" if htmx else "integrations/page.html"
    return render_template(template, **context)


def render_row(integration: Integration, company: Company, mapping: CompanyMapping | None, **extra):
    extra.setdefault("blocker", sync_blocker(integration))
    return render_template("integrations/_company_row.html",
                           **_context(integration, company=company, mapping=mapping, **extra))


def companies_url(integration: Integration) -> str:
    """Where a row action without JavaScript returns: the page (filter, search) it was pressed on."""
    return safe_next(request.form.get("next"), url_for(f"{integration.kind}.companies"))


def _company_or_404(company_id: int) -> Company:
    company = db.session.get(Company, company_id)
    if company is None:
        abort(404)
    return company


# --------------------------------------------------------------------------------------------------
# Integrations > Available Integrations
# --------------------------------------------------------------------------------------------------
@bp.get("/")
def index():
    existing = {i.kind: i for i in db.session.scalars(db.select(Integration)).all()}
    tiles = []
    for kind in PSA_KINDS:
        if f"{kind}.page" not in current_app.view_functions:
            continue
        integration = existing.get(kind)
        if integration is None or not integration.has_credentials:
            state = "not set up"
        elif integration.credentials_status == "failing":
            state = "credentials failing"
        elif integration.enabled:
            state = "connected"
        else:
            state = "disabled"
        tiles.append({"kind": kind, "name": display_name(kind), "integration": integration, "state": state,
                      "run": latest_run(integration) if integration is not None else None,
                      "url": url_for(f"{kind}.page")})
    return render_template("integrations/index.html", tiles=tiles)


# --------------------------------------------------------------------------------------------------
# One integration: settings (credentials, status, product mappings, scope, schedule, options)
# --------------------------------------------------------------------------------------------------
def settings_page(kind: str):
    integration = get_integration(kind)
    return render_template("integrations/page.html",
                           **settings_context(integration, refresh=request.args.get("refresh") == "products"))


def authentication_failed(integration: Integration, error: PsaError, notices: list[str], typed: dict[str, str]):
    """HTMX: only the message is swapped in, so every field keeps what was typed (secrets too, without
    ever sending one back) and saved secrets still say "saved". Without JavaScript: the page again."""
    if not htmx:
        return render_settings(integration, auth_error=error, notices=notices, typed=typed)
    return htmx_answer(render_template("integrations/_auth_result.html", **_context(
        integration, auth_error=error, notices=notices)), retarget="#auth-result")


@admin_only
def authenticate(kind: str):
    """Check the typed credentials with the PSA's cheapest call; save them only when they work."""
    integration = get_integration(kind)
    fields = client_class(kind).credential_fields
    submitted = {f.name: request.form.get(f.name, "") for f in fields}
    typed = {f.name: submitted[f.name].strip() for f in fields if not f.secret}
    notices: list[str] = []
    try:
        values, notices = merge_credentials(integration, submitted)
        typed.update({f.name: values.get(f.name, "") for f in fields if not f.secret})
        missing = [f.label for f in fields if f.required and not values.get(f.name)]
        if missing:
            raise ValidationFailed(f"Missing: {', '.join(missing)}.", hint="Fill in every required field.")
        with psa(integration, values) as client:
            tenant = client.check_credentials()
    except PsaError as exc:
        db.session.rollback()
        return authentication_failed(get_integration(kind), exc, notices, typed)
    changed = save_credentials(integration, values)
    integration.credentials_status = "ok"
    integration.credentials_message = tenant or ""
    integration.credentials_checked_at = utcnow()
    if changed:
        audit.record("integration.credentials", kind, f"{display_name(kind)} credentials changed",
                     after={"fields": changed})
    db.session.commit()
    forget_lists(integration)
    return render_settings(integration, auth_ok=tenant or "Authenticated.", notices=notices)


@admin_only
def set_status(kind: str):
    integration = get_integration(kind)
    enable = request.form.get("enabled") == "on"
    if enable and not integration.has_credentials:
        return render_settings(integration, status_error="Authenticate before enabling the integration.")
    if enable != integration.enabled:
        integration.enabled = enable
        audit.record("integration.status", kind, f"{display_name(kind)} {'enabled' if enable else 'disabled'}",
                     before={"enabled": not enable}, after={"enabled": enable})
        db.session.commit()
    return render_settings(integration, status_saved=True)


def products_section(kind: str):
    """The product mappings section again, after Refresh or an explicit Load."""
    integration = get_integration(kind)
    refresh = request.args.get("refresh") == "1"
    if not htmx:
        return redirect(url_for(f"{kind}.page", refresh="products" if refresh else None) + "#products")
    context = _context(integration, **product_section(integration, refresh=refresh, explicit=True))
    return render_template("integrations/_products.html", **context)


def product_options(kind: str):
    """The options of one product's select, filtered by its search box (from the cached list)."""
    integration = get_integration(kind)
    product_id = request.args.get("product", type=int)
    selected = request.args.get(f"product-{product_id}", "")
    search = (request.args.get("q") or "").strip().lower()
    try:
        options = psa_products(integration, explicit=True) or []
    except PsaError as exc:
        return render_template("integrations/_psa_error_option.html", error=exc)
    shown = [o for o in options if not search or search in o["name"].lower() or search in o["detail"].lower()
             or o["id"] == selected]
    return render_template("integrations/_product_options.html", options=shown, selected=selected,
                           **_context(integration))


def product_mapping_names(mappings) -> dict[str, str]:
    """{SeatSync product: PSA product (#id)}: what the audit log shows, in words rather than ids."""
    names = dict(db.session.execute(db.select(Product.id, Product.name)).all())
    return {names.get(m.product_id, f"#{m.product_id}"): " ".join(p for p in (
        f"{m.psa_product_name or ''} (#{m.psa_product_id})".strip(), QuantityRule.of(m).describe()) if p)
        for m in mappings}


def rules_from_form(products) -> tuple[dict[int, dict[str, int | None]], dict[int, str]]:
    """Each product's quantity rule as typed: ({product id: rule}, {product id: what is wrong})."""
    rules, errors = {}, {}
    for product in products:
        rule: dict[str, int | None] = {}
        for name, label in RULE_FIELDS:
            raw = (request.form.get(f"{name}-{product.id}") or "").strip()
            if not raw:
                rule[name] = None if name == "maximum" else 0
            elif raw.isascii() and raw.isdigit() and int(raw) <= RULE_LIMIT:
                rule[name] = int(raw)
            else:
                errors[product.id] = f"{label} must be a whole number from 0 to {RULE_LIMIT:,} (“{raw[:20]}”)."
        if product.id not in errors and rule["maximum"] is not None and rule["maximum"] < rule["minimum"]:
            errors[product.id] = f"The maximum ({rule['maximum']}) must be at least the minimum ({rule['minimum']})."
        rules[product.id] = rule
    return rules, errors


def products_invalid(integration: Integration, errors: dict[int, str]):
    """The section again with what is wrong next to each product (422; nothing was saved)."""
    message = "Nothing was saved: fix the quantity rules marked below."
    if not htmx:
        return render_settings(integration, rule_errors=errors, rule_message=message, typed=request.form), 422
    response = make_response(render_template("integrations/_products.html", **_context(
        integration, **product_section(integration), rule_errors=errors, rule_message=message,
        typed=request.form)), 422)
    response.headers.update({"HX-Retarget": "#products", "HX-Reswap": "outerHTML"})
    return response


def save_products(kind: str):
    integration = get_integration(kind)
    try:
        names = {o["id"]: o["name"] for o in (psa_products(integration, explicit=True) or [])}
    except PsaError as exc:
        return render_settings(integration, products_save_error=exc)
    existing = {m.product_id: m for m in integration.product_mappings}
    before = product_mapping_names(existing.values())
    products = db.session.scalars(db.select(Product).where(Product.active.is_(True))).all()
    rules, errors = rules_from_form(products)
    if errors:
        return products_invalid(integration, errors)
    for product in products:
        chosen = (request.form.get(f"product-{product.id}") or "").strip()
        mapping = existing.get(product.id)
        if not chosen:
            if mapping is not None:
                db.session.delete(mapping)
            continue
        if chosen not in names and (mapping is None or mapping.psa_product_id != chosen):
            continue  # not a live PSA product: ignore rather than save a dangling id
        if mapping is None:
            mapping = ProductMapping(integration=integration, product_id=product.id)
            db.session.add(mapping)
        mapping.psa_product_id = chosen
        mapping.psa_product_name = names.get(chosen, mapping.psa_product_name)
        for name, value in rules[product.id].items():
            setattr(mapping, name, value)
    db.session.flush()
    after = product_mapping_names(db.session.scalars(
        db.select(ProductMapping).filter_by(integration_id=integration.id)))
    if after != before:
        audit.record("integration.product_mappings", kind, f"{display_name(kind)} product mappings saved",
                     before=before, after=after)
    db.session.commit()
    db.session.refresh(integration)
    return htmx_answer(lambda: render_template("integrations/_products.html", **_context(
        integration, **product_section(integration), products_saved=True)),
        fallback=url_for(f"{kind}.page") + "#products", message="Product mappings saved.")


def scope_section_view(kind: str):
    integration = get_integration(kind)
    if not htmx:
        return redirect(url_for(f"{kind}.page") + "#scope")
    context = _context(integration, **scope_section(integration, refresh=request.args.get("refresh") == "1",
                                                    explicit=True))
    return render_template("integrations/_scope.html", **context)


def save_scope(kind: str):
    integration = get_integration(kind)
    before = scope_filter(integration)
    after = {name: sorted(request.form.getlist(name)) for name in ("type_ids", "status_ids")}
    if after != before:
        integration.scope = after
        audit.record("integration.scope", kind, f"{display_name(kind)} PSA scope saved", before=before, after=after)
        db.session.commit()
    return htmx_answer(lambda: render_template("integrations/_scope.html", **_context(
        integration, **scope_section(integration), scope_saved=True)),
        fallback=url_for(f"{kind}.page") + "#scope", message="PSA scope saved.")


def save_schedule(kind: str):
    integration = get_integration(kind)
    schedule_kind = request.form.get("schedule_kind", "off")
    error = None
    try:
        at = dt.time.fromisoformat(request.form.get("schedule_time") or "02:00")
        weekday = int(request.form.get("schedule_weekday") or 0)
        if schedule_kind not in ("off", "daily", "weekly") or not 0 <= weekday <= 6:
            raise ValueError
    except ValueError:
        error = "Choose off, daily or weekly, a time like 02:00 and a day of the week."
    if error is None:
        before = {"kind": integration.schedule_kind, "time": integration.schedule_time.strftime("%H:%M")
                  if integration.schedule_time else None, "weekday": integration.schedule_weekday}
        integration.schedule_kind = schedule_kind
        integration.schedule_time = at.replace(second=0, microsecond=0)
        integration.schedule_weekday = weekday
        after = {"kind": schedule_kind, "time": at.strftime("%H:%M"), "weekday": weekday}
        if after != before:
            audit.record("integration.schedule", kind, f"{display_name(kind)} sync schedule saved",
                         before=before, after=after)
        db.session.commit()
    return htmx_answer(lambda: render_template("integrations/_schedule.html", **_context(
        integration, next_run=next_run(integration), weekdays=WEEKDAYS, schedule_error=error,
        schedule_saved=error is None, blocker=sync_blocker(integration), run=latest_run(integration))),
        fallback=url_for(f"{kind}.page") + "#schedule", message=error or "Sync schedule saved.",
        category="error" if error else "success")


def whole_number(value: str | None, default: int) -> int:
    """A threshold typed in a form: a whole number from 0 to 1,000,000; anything else keeps the default."""
    try:
        return min(max(int(value or ""), 0), 1_000_000)
    except ValueError:
        return default


def save_options(kind: str):
    integration = get_integration(kind)
    words = WORDS[kind]
    before = dict(integration.options or {})
    after = dict(before)
    push_month = request.form.get("push_month", "last_closed_month")
    after["push_month"] = push_month if push_month in ("last_closed_month", "month_to_date") else "last_closed_month"
    for name in ("create_missing_lines", "review_before_push", "decreases_need_approval"):
        after[name] = request.form.get(name) == "on"
    after["keep_history"] = words.keep_history and request.form.get("keep_history") == "on"
    for name in ("alert_swing_percent", "alert_swing_units"):
        after[name] = whole_number(request.form.get(name), integration.option(name))
    decreases_from = request.form.get("decreases_from", "now")
    after["decreases_from"] = decreases_from if decreases_from in ("now", "next_period") else "now"
    if after != before:
        integration.options = after
        audit.record("integration.options", kind, f"{display_name(kind)} options saved", before=before, after=after)
        db.session.commit()
    return htmx_answer(lambda: render_template("integrations/_options.html",
                                               **_context(integration, options_saved=True)),
                       fallback=url_for(f"{kind}.page") + "#options", message="Options saved.")


def sync_now(kind: str):
    integration = get_integration(kind)
    run, reason = start_sync(integration, "sync_now")
    return htmx_answer(lambda: render_template("integrations/_progress.html", **_context(
        integration, run=run or latest_run(integration), blocker=sync_blocker(integration), sync_error=reason)),
        fallback=safe_next(request.form.get("next"), url_for(f"{kind}.page")), message=reason or "Sync started.",
        category="error" if reason else "success",
        trigger="sync-started" if run is not None else None)  # the company table reloads once to show queued rows


def progress(kind: str):
    """The run's progress bar; polled every 2 s while the run is live, then returned without the trigger."""
    integration = get_integration(kind)
    run = latest_run(integration)
    finished = run is None or run.state not in LIVE_RUN_STATES
    return htmx_answer(render_template("integrations/_progress.html", **_context(
        integration, run=run, blocker=sync_blocker(integration))),
        trigger="sync-finished" if finished else None)  # polling stops here: show every row's final status


# --------------------------------------------------------------------------------------------------
# Company mapping
# --------------------------------------------------------------------------------------------------
def companies(kind: str):
    integration = get_integration(kind)
    search = (request.args.get("q") or "").strip()
    flt = request.args.get("filter", "")
    flt = flt if flt in FILTERS else ""
    page = company_page(integration, search, flt, request.args.get("page", 1, type=page_number))
    context = _context(integration, page=page, search=search, flt=flt, filters=FILTERS,
                       blocker=sync_blocker(integration), run=latest_run(integration))
    if htmx and htmx.target == "company-table":
        return render_template("integrations/_company_table.html", **context)
    return render_template("integrations/companies.html", **context)


def company_row(kind: str, company_id: int):
    """One row of the table: after Cancel, and polled while the row is queued or syncing."""
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    if not htmx:
        return redirect(url_for(f"{kind}.companies", q=company.name))
    return render_row(integration, company, mapping_for(integration, company))


def _psa_companies(integration: Integration, search: str) -> list[dict[str, str]]:
    with psa(integration) as client:
        return _items(client.search_companies(search, **scope_filter(integration), limit=50))


def _agreements(integration: Integration, psa_company_id: str) -> list[dict[str, str]]:
    with psa(integration) as client:
        return [{"id": a.id, "name": a.name, "detail": a.detail} for a in client.list_agreements(psa_company_id)]


def override_context(integration: Integration, mapping: CompanyMapping | None) -> dict[str, Any]:
    """The mapped products, and which of them this company bills on another agreement than its mapping's."""
    products = db.session.execute(
        db.select(ProductMapping.product_id, Product.name).join(Product, Product.id == ProductMapping.product_id)
        .where(ProductMapping.integration_id == integration.id).order_by(Product.name)).all()
    overrides = {o.product_id: o.agreement_id for o in mapping.overrides} if mapping is not None else {}
    return {"override_products": products, "overrides": overrides}


def save_overrides(mapping: CompanyMapping, default: str, agreements: list[dict[str, str]], form) -> str | None:
    """Per-product agreement overrides from the editor's form; an error sentence when one is not an active
    agreement of the PSA company (the mapping is left as it was)."""
    by_id = {a["id"]: a for a in agreements}
    wanted: dict[int, dict[str, str]] = {}
    for product_id, name in override_context(mapping.integration, None)["override_products"]:
        chosen = (form.get(f"override-{product_id}") or "").strip()
        if not chosen or chosen == default:
            continue
        if chosen not in by_id:
            return f"The {name} override is not an active agreement of this company: pick another or the default."
        wanted[product_id] = by_id[chosen]
    current = {o.product_id: o for o in mapping.overrides}
    if {p: o.agreement_id for p, o in current.items()} == {p: a["id"] for p, a in wanted.items()}:
        return None
    for product_id, override in current.items():
        if product_id not in wanted:
            mapping.overrides.remove(override)
    for product_id, agreement in wanted.items():
        override = current.get(product_id) or AgreementOverride(product_id=product_id)
        override.agreement_id, override.agreement_name = agreement["id"], agreement["name"]
        if product_id not in current:
            mapping.overrides.append(override)
    audit.record("company_mapping.overrides", mapping.company.name if mapping.company else "",
                 f"Products billed on another agreement: {len(wanted)}",
                 after={str(p): a["name"] for p, a in wanted.items()})
    return None


def _split_choice(value: str) -> tuple[str, str]:
    """PSA company options carry "id:name" so the name is saved without another PSA call."""
    psa_id, _, name = (value or "").partition(":")
    return psa_id.strip(), name.strip()


def edit_company(kind: str, company_id: int):
    """The inline editor (HTMX: a table row; without JavaScript: a page with the same form)."""
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    mapping = mapping_for(integration, company)
    search = request.args.get("q")
    chosen_id, chosen_name = _split_choice(request.args.get("psa_company", ""))
    if not chosen_id and mapping is not None and mapping.psa_company_id:
        chosen_id, chosen_name = mapping.psa_company_id, mapping.psa_company_name
    context = _context(integration, company=company, mapping=mapping, search=search or "",
                       chosen_id=chosen_id, chosen_name=chosen_name, psa_companies=[], agreements=None,
                       chosen_agreement=request.args.get("agreement") or (mapping.agreement_id if mapping else ""),
                       **override_context(integration, mapping))
    try:
        context["psa_companies"] = _psa_companies(integration, search or "")
        if chosen_id:
            context["agreements"] = _agreements(integration, chosen_id)
    except PsaError as exc:
        context["editor_error"] = exc
    if htmx:
        return render_template("integrations/_company_editor.html", **context)
    return render_template("integrations/edit.html", **context)


def psa_company_options(kind: str, company_id: int):
    integration = get_integration(kind)
    chosen_id, _ = _split_choice(request.args.get("psa_company", ""))
    try:
        items = _psa_companies(integration, request.args.get("q", ""))
    except PsaError as exc:
        return render_template("integrations/_psa_error_option.html", error=exc)
    return render_template("integrations/_psa_company_options.html", psa_companies=items, chosen_id=chosen_id,
                           chosen_name="", **_context(integration))


def agreement_options(kind: str, company_id: int):
    integration = get_integration(kind)
    chosen_id, _ = _split_choice(request.args.get("psa_company", ""))
    agreements = None
    try:
        if chosen_id:
            agreements = _agreements(integration, chosen_id)
    except PsaError as exc:
        return render_template("integrations/_psa_error_option.html", error=exc)
    return render_template("integrations/_agreement_options.html", agreements=agreements, chosen_agreement="",
                           **_context(integration))


def save_company(kind: str, company_id: int):
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    words = WORDS[kind]
    psa_company_id, psa_company_name = _split_choice(request.form.get("psa_company", ""))
    agreement_id = (request.form.get("agreement") or "").strip()
    error = None
    agreement = None
    agreements: list[dict[str, str]] = []
    if not psa_company_id:
        error = f"Pick the {display_name(kind)} company."
    elif not agreement_id:
        error = f"Pick {words.an_agreement}: a mapping cannot be saved without one."
    else:
        try:
            agreements = _agreements(integration, psa_company_id)
            agreement = next((a for a in agreements if a["id"] == agreement_id), None)
        except PsaError as exc:
            error = f"{exc.psa_message} {exc.hint}"
        else:
            if agreement is None:
                error = f"That {words.agreement} is not an active {words.agreement} of this company any more."
    mapping = mapping_for(integration, company, create=True) if not error else None
    if mapping is not None:
        error = save_overrides(mapping, agreement_id, agreements, request.form)
    if error:
        db.session.rollback()
        if not htmx:
            flash(error, "error")
            return redirect(url_for(f"{kind}.edit_company", company_id=company.id,
                                    psa_company=request.form.get("psa_company", "")))
        mapping = mapping_for(integration, company)
        if psa_company_id and not agreements:
            try:
                agreements = _agreements(integration, psa_company_id)
            except PsaError:
                agreements = []
        try:
            psa_companies = _psa_companies(integration, "")
        except PsaError:
            psa_companies = []
        return render_template("integrations/_company_editor.html", **_context(
            integration, company=company, mapping=mapping, search="", chosen_id=psa_company_id,
            chosen_name=psa_company_name, psa_companies=psa_companies,
            agreements=agreements if psa_company_id else None, chosen_agreement="", save_error=error,
            **override_context(integration, mapping)))
    before = {"psa_company": mapping.psa_company_name, f"{words.agreement}": mapping.agreement_name}
    changed = (mapping.psa_company_id, mapping.agreement_id) != (psa_company_id, agreement_id)
    mapping.psa_company_id = psa_company_id
    mapping.psa_company_name = psa_company_name or mapping.psa_company_name
    mapping.agreement_id = agreement_id
    mapping.agreement_name = agreement["name"]
    if changed:
        mapping_edited(mapping)
        audit.record("company_mapping.saved", company.name, f"{company.name} mapped to {mapping.psa_company_name} "
                     f"/ {mapping.agreement_name} in {display_name(kind)}", before=before,
                     after={"psa_company": mapping.psa_company_name, f"{words.agreement}": mapping.agreement_name})
    db.session.commit()
    return htmx_answer(lambda: render_row(integration, company, mapping), fallback=companies_url(integration),
                       message=f"{company.name} mapped.")


def exclude_company(kind: str, company_id: int):
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    mapping = mapping_for(integration, company, create=True)
    mapping.excluded = not mapping.excluded
    audit.record("company_mapping.excluded", company.name,
                 f"{company.name} {'excluded from' if mapping.excluded else 'included again in'} "
                 f"{display_name(kind)} syncs", after={"excluded": mapping.excluded})
    db.session.commit()
    return htmx_answer(lambda: render_row(integration, company, mapping), fallback=companies_url(integration))


def sync_company(kind: str, company_id: int):
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    mapping = mapping_for(integration, company)
    reason = None
    if mapping is None or not mapping.is_mapped:
        reason = f"Map {company.name} to {WORDS[kind].an_agreement} first."
    elif mapping.excluded:
        reason = f"{company.name} is excluded from syncs."
    else:
        _run, reason = start_sync(integration, "row", mapping)
        db.session.refresh(mapping)
    return htmx_answer(lambda: render_row(integration, company, mapping, row_error=reason),
                       fallback=companies_url(integration), message=reason or f"Sync started for {company.name}.",
                       category="error" if reason else "success")


def company_details(kind: str, company_id: int):
    integration = get_integration(kind)
    company = _company_or_404(company_id)
    mapping = mapping_for(integration, company)
    runs = []
    if mapping is not None:
        results = db.session.scalars(
            db.select(LineResult).where(LineResult.company_mapping_id == mapping.id)
            .order_by(LineResult.created_at.desc(), LineResult.id.desc()).limit(100)
        ).all()
        grouped: OrderedDict[int, list[LineResult]] = OrderedDict()
        for result in results:
            grouped.setdefault(result.run_id, []).append(result)
        runs = [(lines[0].run, lines) for lines in list(grouped.values())[:5]]
    psa_names = {m.psa_product_id: m.psa_product_name for m in integration.product_mappings} if integration.id else {}
    return render_template("integrations/details.html", **_context(
        integration, company=company, mapping=mapping, runs=runs, psa_names=psa_names,
        quantity_readable=client_class(kind).quantity_readable))


# --------------------------------------------------------------------------------------------------
# Suggest matches
# --------------------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return " ".join((name or "").split()).casefold()


def suggest_matches(integration: Integration) -> tuple[list[dict[str, Any]], list[str], int]:
    """Exact-name proposals for unmapped companies: (proposals, ambiguous names, more left)."""
    with psa(integration) as client:
        psa_companies = client.list_companies(**scope_filter(integration))
    by_name: dict[str, list] = {}
    for item in psa_companies:
        by_name.setdefault(_key(item.name), []).append(item)
    mapped_ids = {cid for (cid,) in db.session.execute(
        db.select(CompanyMapping.company_id).where(
            CompanyMapping.integration_id == integration.id,
            or_(CompanyMapping.psa_company_id.is_not(None), CompanyMapping.excluded.is_(True))))}
    companies = db.session.scalars(db.select(Company).where(Company.active.is_(True))
                                   .order_by(func.lower(Company.name))).all()
    seatsync_counts: dict[str, int] = {}
    for company in companies:
        seatsync_counts[_key(company.name)] = seatsync_counts.get(_key(company.name), 0) + 1
    proposals, ambiguous, more = [], [], 0
    for company in companies:
        if company.id in mapped_ids:
            continue
        matches = by_name.get(_key(company.name), [])
        if not matches:
            continue
        if len(matches) > 1 or seatsync_counts[_key(company.name)] > 1:
            ambiguous.append(company.name)
            continue
        if len(proposals) >= SUGGEST_LIMIT:
            more += 1
            continue
        proposals.append({"company": company, "psa": matches[0]})
    with psa(integration) as client:
        for proposal in proposals:
            proposal["agreements"] = client.list_agreements(proposal["psa"].id)
    return proposals, ambiguous, more


def suggest(kind: str):
    integration = get_integration(kind)
    try:
        proposals, ambiguous, more = suggest_matches(integration)
        error = None
    except PsaError as exc:
        proposals, ambiguous, more, error = [], [], 0, exc
    return render_template("integrations/suggest.html", **_context(
        integration, proposals=proposals, ambiguous=ambiguous, more=more, suggest_error=error))


def confirm_suggestions(kind: str):
    """Save the proposals the admin kept; a company mapped meanwhile is never overwritten."""
    integration = get_integration(kind)
    words = WORDS[kind]
    saved, skipped = 0, 0
    for company_id in request.form.getlist("company", type=db_int):
        company = db.session.get(Company, company_id)
        psa_company_id, psa_company_name = _split_choice(request.form.get(f"psa_company-{company_id}", ""))
        agreement_id, _, agreement_name = (request.form.get(f"agreement-{company_id}") or "").partition(":")
        if company is None or not psa_company_id or not agreement_id:
            skipped += 1
            continue
        mapping = mapping_for(integration, company, create=True)
        if mapping.psa_company_id or mapping.excluded:
            skipped += 1
            continue
        mapping.psa_company_id, mapping.psa_company_name = psa_company_id, psa_company_name
        mapping.agreement_id, mapping.agreement_name = agreement_id, agreement_name
        saved += 1
    if saved:
        audit.record("company_mapping.suggested", kind, f"{saved} suggested {display_name(kind)} matches confirmed")
    db.session.commit()
    message = f"{saved} {'company' if saved == 1 else 'companies'} mapped."
    if skipped:
        message += f" {skipped} skipped (no {words.agreement} chosen, or mapped meanwhile)."
    flash(message, "success")
    return redirect(url_for(f"{kind}.companies"))


# --------------------------------------------------------------------------------------------------
# One blueprint per PSA, from the shared views
# --------------------------------------------------------------------------------------------------
ROUTES: list[tuple[str, str, Callable, str]] = [
    ("/", "page", settings_page, "GET"),
    ("/credentials", "authenticate", authenticate, "POST"),
    ("/status", "set_status", set_status, "POST"),
    ("/products", "products", products_section, "GET"),
    ("/products/options", "product_options", product_options, "GET"),
    ("/products", "save_products", save_products, "POST"),
    ("/scope", "scope", scope_section_view, "GET"),
    ("/scope", "save_scope", save_scope, "POST"),
    ("/schedule", "save_schedule", save_schedule, "POST"),
    ("/options", "save_options", save_options, "POST"),
    ("/sync", "sync_now", sync_now, "POST"),
    ("/progress", "progress", progress, "GET"),
    ("/companies", "companies", companies, "GET"),
    ("/companies/suggest", "suggest", suggest, "GET"),
    ("/companies/suggest", "confirm_suggestions", confirm_suggestions, "POST"),
    ("/companies/<int:company_id>", "company_details", company_details, "GET"),
    ("/companies/<int:company_id>", "save_company", save_company, "POST"),
    ("/companies/<int:company_id>/row", "company_row", company_row, "GET"),
    ("/companies/<int:company_id>/edit", "edit_company", edit_company, "GET"),
    ("/companies/<int:company_id>/psa-companies", "psa_company_options", psa_company_options, "GET"),
    ("/companies/<int:company_id>/agreements", "agreement_options", agreement_options, "GET"),
    ("/companies/<int:company_id>/exclude", "exclude_company", exclude_company, "POST"),
    ("/companies/<int:company_id>/sync", "sync_company", sync_company, "POST"),
]


def _bound(view: Callable, kind: str) -> Callable:
    @wraps(view)  # keeps the access marks (admin_only) that security.py reads
    def bound(**kwargs):
        return view(kind, **kwargs)

    return bound


def psa_blueprint(kind: str, words: PsaWords) -> Blueprint:
    """The blueprint of one PSA: the shared views bound to its integration, in its words."""
    WORDS[kind] = words
    blueprint = Blueprint(kind, __name__, url_prefix=f"/integrations/{kind}")
    for rule, endpoint, view, method in ROUTES:
        blueprint.add_url_rule(rule, endpoint, _bound(view, kind), methods=[method])
    return blueprint
