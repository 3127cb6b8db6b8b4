"""CSV import of seats (PRODUCT.md §2): validate the whole file, preview the changes, apply all or nothing.

Columns: company, company_external_id, product, user_email, active_from, active_to, billable.
Rows are upserted by company + product + user e-mail, so importing the same file twice changes nothing.
Seats that are not in the file are left alone (an import adds and corrects, it never deletes).

Companies are found by company_external_id when given, else by name (case and surrounding spaces
ignored); products by name (case and surrounding spaces ignored). Unknown companies and products are
created with the import, all or nothing; the preview lists each of them by name, so a typo shows up
there before anything is written.

Dates are `YYYY-MM-DD` (midnight in the organisation's time zone) or `YYYY-MM-DD HH:MM[:SS]`
(organisation time) optionally with `Z` or a UTC offset.

In the browser the file goes through the job queue — validate (preview), then commit — with its bytes
and progress kept in Redis under this module's keys, so any worker can run it and the page polls a
progress bar. `flask import-seats FILE` runs the same two steps in-process.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import insert, select, update

from .extensions import db
from .models import Company, Product, Seat
from .models._types import utcnow

MAX_BYTES = 50 * 1024 * 1024
COLUMNS = ("company", "company_external_id", "product", "user_email", "active_from", "active_to", "billable")
REQUIRED = ("company", "product", "user_email", "active_from")
TRUE_WORDS = {"true", "yes", "y", "1", "billable"}
FALSE_WORDS = {"false", "no", "n", "0", "not billable"}
PROGRESS_EVERY = 5000
CHUNK = 2000
MAX_SAMPLES = 50

# The common case, checked fast; anything else goes to email_validator for a precise reason.
SIMPLE_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)

Progress = Callable[[int, int], None]


def human_size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


@dataclass
class RowError:
    line: int  # 0: the file as a whole
    reason: str
    column: str | None = None

    def as_dict(self):
        return {"line": self.line, "column": self.column, "reason": self.reason}


@dataclass
class ImportPlan:
    """What importing a file would change; `errors` non-empty means nothing may be imported."""

    errors: list[RowError] = field(default_factory=list)
    rows: int = 0
    new_companies: list[dict] = field(default_factory=list)  # {"key", "name", "external_id"}
    new_products: list[dict] = field(default_factory=list)  # {"key", "name"}
    company_updates: list[dict] = field(default_factory=list)  # {"id", "name", "external_id", "was"}
    new_seats: list[dict] = field(default_factory=list)  # company_key or company_id, product_id, ...
    seat_updates: list[dict] = field(default_factory=list)  # {"id", changed fields..., "was"}
    unchanged: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changes(self) -> int:
        return (len(self.new_companies) + len(self.new_products) + len(self.company_updates) + len(self.new_seats)
                + len(self.seat_updates))

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "errors": [e.as_dict() for e in self.errors],
            "new_companies": len(self.new_companies),
            "new_products": len(self.new_products),
            # Named in the preview: what the import will create (first MAX_SAMPLES of each).
            "new_company_names": [c["name"] for c in self.new_companies[:MAX_SAMPLES]],
            "new_product_names": [p["name"] for p in self.new_products[:MAX_SAMPLES]],
            "updated_companies": len(self.company_updates),
            "new_seats": len(self.new_seats),
            "updated_seats": len(self.seat_updates),
            "unchanged": self.unchanged,
            "samples": self.samples,
        }

    def sample(self, text: str) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(text)


# --- values ---------------------------------------------------------------------------------------


def parse_when(value: str, tz: ZoneInfo) -> dt.datetime:
    value = value.strip()
    if not re.match(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$", value):
        raise ValueError
    parsed = dt.datetime.fromisoformat(value)
    if not 1970 <= parsed.year <= 2200:
        raise ValueError
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(dt.UTC)


def parse_email(value: str) -> str:
    value = value.strip()
    if not SIMPLE_EMAIL.match(value):
        validate_email(value, check_deliverability=False)  # raises with the reason
    return value.lower()


def parse_billable(value: str) -> bool:
    word = value.strip().lower()
    if word == "" or word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError


# --- the whole file -------------------------------------------------------------------------------


def _decode(data: bytes, plan: ImportPlan) -> str | None:
    if len(data) > MAX_BYTES:
        plan.errors.append(RowError(0, f"The file is {human_size(len(data))}; the limit is 50 MB. "
                                       "Split it into smaller files (each is imported on its own)."))
        return None
    if not data.strip():
        plan.errors.append(RowError(0, "The file is empty."))
        return None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        plan.errors.append(RowError(0, "The file is UTF-16 text; save it as \"CSV UTF-8 (comma delimited)\"."))
        return None
    if b"\x00" in data[:4096]:
        plan.errors.append(RowError(0, "This is not a CSV text file (it contains binary data)."))
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        plan.errors.append(RowError(line, f"The file is not UTF-8 text (byte 0x{data[error.start]:02x}); save it as "
                                          "\"CSV UTF-8 (comma delimited)\" and upload it again."))
        return None


def _header(reader, plan: ImportPlan) -> list[str] | None:
    try:
        header = next(reader)
    except StopIteration:
        plan.errors.append(RowError(0, "The file is empty."))
        return None
    names = [h.strip().lower() for h in header]
    if len(names) == 1:
        for delimiter, word in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
            if delimiter in header[0]:
                plan.errors.append(RowError(1, f"The columns are separated by {word}; SeatSync needs commas. Save "
                                               "the file as \"CSV UTF-8 (comma delimited)\"."))
                return None
    missing = [c for c in REQUIRED if c not in names]
    unknown = [h for h in names if h and h not in COLUMNS]
    duplicated = sorted({h for h in names if h and names.count(h) > 1})
    if missing or unknown or duplicated:
        parts = []
        if missing:
            parts.append("missing column(s): " + ", ".join(missing))
        if unknown:
            parts.append("unknown column(s): " + ", ".join(unknown))
        if duplicated:
            parts.append("repeated column(s): " + ", ".join(duplicated))
        plan.errors.append(RowError(1, "Header: " + "; ".join(parts) + ". Expected: " + ", ".join(COLUMNS) + "."))
        return None
    return names


class _Companies:
    """Resolves a row's company to an existing one (id) or a new one (key), consistently over the file."""

    def __init__(self):
        self.by_external: dict[str, tuple[int, str]] = {}
        self.by_name: dict[str, list[tuple[int, str | None, str]]] = {}
        for cid, name, external in db.session.execute(select(Company.id, Company.name, Company.external_id)):
            if external:
                self.by_external[external] = (cid, name)
            self.by_name.setdefault(name.strip().lower(), []).append((cid, external, name))
        self.seen: dict[str, tuple[str, int]] = {}  # key -> (name as first given, line)
        self.new: dict[str, dict] = {}
        self.updates: dict[int, dict] = {}

    def resolve(self, name: str, external: str, line: int) -> tuple[int | str | None, str | None]:
        """(company id, or a new company's key; error reason)."""
        key = f"ext:{external}" if external else f"name:{name.lower()}"
        if key in self.seen and external and self.seen[key][0] != name:
            first, first_line = self.seen[key]
            return None, f"company_external_id {external!r} is given for {first!r} on line {first_line}"
        self.seen.setdefault(key, (name, line))
        if external:
            if external in self.by_external:
                cid, current = self.by_external[external]
                if current != name and cid not in self.updates:
                    self.updates[cid] = {"id": cid, "name": name, "was": {"name": current}}
                return cid, None
            # A company first imported without an external id is adopted, not duplicated.
            candidates = [c for c in self.by_name.get(name.lower(), []) if not c[1]]
            if len(candidates) == 1:
                cid = candidates[0][0]
                change = self.updates.setdefault(cid, {"id": cid, "was": {"external_id": None}})
                change["external_id"] = external
                if candidates[0][2] != name:
                    change["name"], change["was"]["name"] = name, candidates[0][2]
                self.by_external[external] = (cid, name)
                self.by_name[name.lower()] = [(c, external if c == cid else e, n)
                                              for c, e, n in self.by_name[name.lower()]]
                return cid, None
        else:
            candidates = self.by_name.get(name.lower(), [])
            if len(candidates) > 1:
                return None, f"several companies are named {name!r}; add their company_external_id"
            if len(candidates) == 1:
                return candidates[0][0], None
        self.new.setdefault(key, {"key": key, "name": name, "external_id": external or None})
        return key, None


def validate(data: bytes, progress: Progress | None = None, tz: ZoneInfo | None = None) -> ImportPlan:
    """Read and check the whole file and work out what it would change. Writes nothing."""
    from .timezones import org_zone

    plan = ImportPlan()
    text = _decode(data, plan)
    if text is None:
        return plan
    total = max(text.count("\n"), 1)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    names = _header(reader, plan)
    if names is None:
        return plan
    rows = _RowChecker(plan, tz or org_zone())
    for line, row in _data_rows(reader, names, plan):
        if progress and plan.rows % PROGRESS_EVERY == 0:
            progress(reader.line_num, total)
        rows.check(line, row)
    if progress:
        progress(total, total)
    if plan.rows == 0 and not plan.errors:
        plan.errors.append(RowError(0, "The file has a header but no rows."))
    if not plan.errors:
        rows.describe_changes()
    return plan


def _data_rows(reader, names: list[str], plan: ImportPlan) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped value}) of each non-blank row with as many values as the header."""
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            plan.errors.append(RowError(reader.line_num, f"unreadable CSV ({error}); check the quotes"))
            return
        line = reader.line_num - (sum(v.count("\n") for v in values))  # a quoted value may span lines
        if not any(v.strip() for v in values):
            continue
        plan.rows += 1
        if len(values) != len(names):
            plan.errors.append(RowError(line, f"{len(values)} values but the header has {len(names)} columns "
                                              "(a value containing a comma needs double quotes)"))
            continue
        yield line, {n: v.strip() for n, v in zip(names, values, strict=True) if n}


class _RowChecker:
    """Checks rows one by one and collects the seats, companies and products the file would write."""

    def __init__(self, plan: ImportPlan, tz: ZoneInfo):
        self.plan, self.tz = plan, tz
        self.products: dict[str, int | str] = {  # name -> id, or a new product's key
            name.strip().lower(): pid for pid, name in db.session.execute(select(Product.id, Product.name))}
        self.new_products: dict[str, dict] = {}
        self.companies = _Companies()
        self.rows: dict[tuple, dict] = {}  # (company id or key, product id, email) -> seat values
        self.first_line: dict[tuple, int] = {}
        self.line = 0

    def bad(self, column: str | None, reason: str) -> None:
        self.plan.errors.append(RowError(self.line, reason, column))

    def check(self, line: int, row: dict[str, str]) -> None:
        self.line = line
        before = len(self.plan.errors)
        for column in REQUIRED:
            if not row.get(column):
                self.bad(column, f"{column} is empty")
        for column in ("company", "company_external_id", "product"):
            if len(row.get(column, "")) > 255:
                self.bad(column, f"{column} is longer than 255 characters")
        product_id = self.product(row.get("product", ""))
        email = self.email(row.get("user_email", ""))
        start, end = self.period(row)
        billable = self.billable(row.get("billable", ""))
        company = self.company(row)
        if len(self.plan.errors) > before or company is None or product_id is None or email is None:
            return
        key = (company, product_id, email)
        if key in self.rows:
            self.bad(None, f"duplicate row: the same company, product and user as line {self.first_line[key]}")
            return
        self.first_line[key] = line
        self.rows[key] = {"active_from": start, "active_to": end, "billable": billable, "line": line,
                          "label": f"{row['company']} / {row['product']} / {email}"}

    def product(self, name: str) -> int | str | None:
        """The product's id, or a new product's key (None: no usable name)."""
        product_id = self.products.get(name.lower())
        if name and product_id is None and len(name) <= 255:
            product_id = self.products[name.lower()] = f"product:{name.lower()}"
            self.new_products[product_id] = {"key": product_id, "name": name}
        return product_id

    def email(self, value: str) -> str | None:
        if not value:
            return None
        try:
            return parse_email(value)
        except EmailNotValidError as error:
            self.bad("user_email", f"bad e-mail {value!r}: {error}")
            return None

    def period(self, row: dict[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
        parsed: dict[str, dt.datetime | None] = {"active_from": None, "active_to": None}
        for column in parsed:
            if row.get(column):
                try:
                    parsed[column] = parse_when(row[column], self.tz)
                except ValueError:
                    self.bad(column, f"bad date {row[column]!r} in {column}: use YYYY-MM-DD or YYYY-MM-DD HH:MM "
                                     "(optionally with Z or a UTC offset)")
        start, end = parsed["active_from"], parsed["active_to"]
        if start and end and end <= start:
            self.bad("active_to", f"active_to {row['active_to']} is before active_from {row['active_from']}"
                     if end < start else "active_to is the same as active_from")
        return start, end

    def billable(self, value: str) -> bool:
        try:
            return parse_billable(value)
        except ValueError:
            self.bad("billable", f"bad billable value {value!r}: use true or false")
            return True

    def company(self, row: dict[str, str]) -> int | str | None:
        if not row.get("company"):
            return None
        company, reason = self.companies.resolve(row["company"], row.get("company_external_id", ""), self.line)
        if reason:
            self.bad("company_external_id", reason)
        return company

    def describe_changes(self) -> None:
        """Fill the plan with what a valid file would write, and a sample of it in words."""
        plan = self.plan
        plan.new_companies = list(self.companies.new.values())
        plan.new_products = list(self.new_products.values())
        for new in plan.new_products:
            plan.sample(f"New product {new['name']!r}")
        plan.company_updates = list(self.companies.updates.values())
        for change in plan.company_updates:
            was = change["was"]
            if "name" in change:
                plan.sample(f"Company {was.get('name')!r} renamed to {change['name']!r}")
            if "external_id" in change:
                plan.sample(f"Company #{change['id']}: external id set to {change['external_id']!r}")
        for new in plan.new_companies:
            plan.sample(f"New company {new['name']!r}")
        _plan_seats(plan, self.rows)


def _plan_seats(plan: ImportPlan, rows: dict[tuple, dict]) -> None:
    existing_ids = sorted({c for c, p, _e in rows if isinstance(c, int) and isinstance(p, int)})
    existing = {}
    for index in range(0, len(existing_ids), CHUNK):
        chunk = existing_ids[index:index + CHUNK]
        for seat in db.session.execute(select(Seat.id, Seat.company_id, Seat.product_id, Seat.user_email,
                                              Seat.active_from, Seat.active_to, Seat.billable)
                                       .where(Seat.company_id.in_(chunk))):
            existing[(seat.company_id, seat.product_id, seat.user_email.lower())] = seat
    for key, values in rows.items():
        company, product_id, email = key
        seat = existing.get(key)
        if seat is None:
            plan.new_seats.append({"company": company, "product_id": product_id, "user_email": email,
                                   "active_from": values["active_from"], "active_to": values["active_to"],
                                   "billable": values["billable"]})
            plan.sample(f"New seat {values['label']}")
            continue
        changed = {name: values[name] for name in ("active_from", "active_to", "billable")
                   if getattr(seat, name) != values[name]}
        if not changed:
            plan.unchanged += 1
            continue
        plan.seat_updates.append({"id": seat.id, **changed})
        plan.sample(f"Seat {values['label']}: " + ", ".join(
            f"{name} {_show(getattr(seat, name))} → {_show(value)}" for name, value in changed.items()))


def _show(value) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if value is None:
        return "—"
    return str(value).lower()


def apply(plan: ImportPlan, filename: str = "", actor: str | None = None, progress: Progress | None = None) -> dict:
    """Write a valid plan in one transaction (all or nothing) and audit it. Commits."""
    from . import audit

    if not plan.ok:
        raise ValueError("a file with errors cannot be imported")
    summary = plan.summary()
    if plan.changes == 0:
        return summary
    try:
        product_ids = {}
        for new in plan.new_products:
            product = Product(name=new["name"])
            db.session.add(product)
            db.session.flush()
            product_ids[new["key"]] = product.id
        company_ids = {}
        for new in plan.new_companies:
            company = Company(name=new["name"], external_id=new["external_id"])
            db.session.add(company)
            db.session.flush()
            company_ids[new["key"]] = company.id
        for change in plan.company_updates:
            db.session.execute(update(Company), [{k: v for k, v in change.items() if k != "was"}])
        steps = len(plan.new_seats) + len(plan.seat_updates)
        done = 0
        now = utcnow()
        for index in range(0, len(plan.new_seats), CHUNK):
            chunk = plan.new_seats[index:index + CHUNK]
            db.session.execute(insert(Seat), [
                {"company_id": company_ids.get(s["company"], s["company"]),
                 "product_id": product_ids.get(s["product_id"], s["product_id"]),
                 "user_email": s["user_email"], "active_from": s["active_from"], "active_to": s["active_to"],
                 "billable": s["billable"], "updated_at": now} for s in chunk])
            done += len(chunk)
            if progress:
                progress(done, steps)
        for index in range(0, len(plan.seat_updates), CHUNK):
            chunk = plan.seat_updates[index:index + CHUNK]
            db.session.execute(update(Seat), [{**s, "updated_at": now} for s in chunk])
            done += len(chunk)
            if progress:
                progress(done, steps)
        audit.record(
            "seats.imported",
            target=filename or "CSV import",
            summary=(f"{plan.rows} rows: {len(plan.new_seats)} new seats, {len(plan.seat_updates)} changed, "
                     f"{plan.unchanged} unchanged; {len(plan.new_companies)} new companies, "
                     f"{len(plan.new_products)} new products, "
                     f"{len(plan.company_updates)} companies updated"),
            after={k: v for k, v in summary.items() if k not in ("errors", "samples")},
            actor=actor,
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return summary


def import_file(data: bytes, filename: str = "", actor: str | None = None, dry_run: bool = False,
                progress: Progress | None = None) -> ImportPlan:
    """Validate, then (unless a dry run or invalid) apply. The CLI's path."""
    plan = validate(data, progress)
    if plan.ok and not dry_run:
        apply(plan, filename, actor, progress)
    return plan


# --- the browser's path: two queued steps with state in Redis -------------------------------------

STATE_TTL = 2 * 3600


def _key(import_id: str, part: str = "state") -> str:
    return f"seatsync:import:{import_id}:{part}"


def read_state(import_id: str) -> dict | None:
    from .queue import get_redis

    raw = get_redis().get(_key(import_id))
    return json.loads(raw) if raw else None


def write_state(import_id: str, **changes) -> dict:
    from .queue import get_redis

    state = read_state(import_id) or {}
    state.update(changes)
    get_redis().set(_key(import_id), json.dumps(state), ex=STATE_TTL)
    return state


def start_upload(data: bytes, filename: str, user_id: int | None) -> str:
    """Keep the file where any worker can read it and queue its validation."""
    from .queue import enqueue, get_redis

    import_id = uuid.uuid4().hex
    get_redis().set(_key(import_id, "data"), data, ex=STATE_TTL)
    write_state(import_id, id=import_id, filename=filename, size=len(data), user_id=user_id,
                status="validating", step="Checking the file", percent=0)
    job = enqueue(validate_job, import_id, job_id=f"import-validate-{import_id}")
    write_state(import_id, job_id=job.id)
    return import_id


def start_commit(import_id: str, actor: str) -> None:
    from .queue import enqueue

    write_state(import_id, status="importing", step="Importing", percent=0, actor=actor)
    enqueue(commit_job, import_id, job_id=f"import-commit-{import_id}")


def _progress(import_id: str, low: int, high: int) -> Progress:
    last = {"percent": -1}

    def report(done: int, total: int) -> None:
        percent = low + (high - low) * min(done, total) // max(total, 1)
        if percent != last["percent"]:
            last["percent"] = percent
            write_state(import_id, percent=percent)

    return report


def _file(import_id: str) -> bytes | None:
    from .queue import get_redis

    return get_redis().get(_key(import_id, "data"))


def validate_job(import_id: str) -> str:
    data = _file(import_id)
    if data is None:
        write_state(import_id, status="failed", step="The uploaded file has expired; upload it again.")
        return "expired"
    try:
        plan = validate(data, _progress(import_id, 0, 100))
    except Exception as error:
        db.session.rollback()
        write_state(import_id, status="failed", step=f"The file could not be checked: {error.__class__.__name__}")
        raise
    write_state(import_id, status="previewed" if plan.ok else "invalid", percent=100, result=plan.summary(),
                step="Ready to import" if plan.ok else "The file has errors")
    return "ok" if plan.ok else "invalid"


def commit_job(import_id: str) -> str:
    state = read_state(import_id) or {}
    data = _file(import_id)
    if data is None:
        write_state(import_id, status="failed", step="The uploaded file has expired; upload it again.")
        return "expired"
    try:
        # Validated again: seats or products may have changed since the preview.
        plan = validate(data, _progress(import_id, 0, 50))
        if not plan.ok:
            write_state(import_id, status="invalid", result=plan.summary(), percent=100,
                        step="The file has errors now (the data changed since the preview); nothing was imported")
            return "invalid"
        summary = apply(plan, state.get("filename", ""), state.get("actor"), _progress(import_id, 50, 100))
    except Exception as error:
        db.session.rollback()
        write_state(import_id, status="failed", percent=100,
                    step=f"The import failed and nothing was imported ({error.__class__.__name__})")
        raise
    from .counts import drifted_closed_months
    from .queue import get_redis

    get_redis().delete(_key(import_id, "data"))
    # Closed months the file changed: the page names them and offers their recompute.
    closed = [m.isoformat() for m in drifted_closed_months()] if plan.changes else []
    write_state(import_id, status="done", percent=100, result=summary, step="Imported", closed_months=closed)
    if plan.changes:
        from .counts import compute_counts_job
        from .queue import enqueue

        enqueue(compute_counts_job)
    return "done"
