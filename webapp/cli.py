"""`flask` commands for the operator."""

from __future__ import annotations

import datetime as dt
import random
import secrets

import click
from flask import Flask

from .extensions import db
from .models import Company, Product, Seat, User
from .models._types import utcnow
from .models.users import ROLES

# The same names as the PSA simulator's demo data (psa_sim/seed.py), so "Suggest matches" finds them.
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
    "Ivy & Oak <Interiors>",  # a name with markup: it must show as text everywhere
    "Juniper Pediatrics",
]


def create_user(email: str, role: str, password: str | None = None) -> tuple[User, str]:
    password = password or secrets.token_urlsafe(12)
    user = db.session.scalar(db.select(User).filter_by(email=email.strip().lower()))
    if user is None:
        user = User(email=email.strip().lower(), role=role)
        db.session.add(user)
    user.role = role
    user.active = True
    user.set_password(password)
    return user, password


def seed_demo_data(rng_seed: int = 42) -> dict[str, int]:
    """Demo companies, products and seats; running it twice changes nothing."""
    rng = random.Random(rng_seed)
    products = {}
    for name in DEMO_PRODUCTS:
        products[name] = db.session.scalar(db.select(Product).filter_by(name=name)) or Product(name=name)
        db.session.add(products[name])
    products[DEMO_PRODUCTS[1]].count_rule = "active_at_month_end"
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    seats = 0
    for index, name in enumerate(DEMO_COMPANIES):
        external_id = f"demo-{index + 1:03d}"
        company = db.session.scalar(db.select(Company).filter_by(external_id=external_id))
        if company is None:
            company = Company(name=name, external_id=external_id)
            db.session.add(company)
            db.session.flush()
        for product in rng.sample(list(products.values()), k=rng.randint(1, 3)):
            db.session.flush()
            for user_number in range(rng.randint(3, 25)):
                email = f"user{user_number + 1}@{name.split()[0].lower().strip('<>&')}.example"
                # Draw every random value whether or not the seat exists, so a second run sees the
                # same sequence and changes nothing.
                started = today - dt.timedelta(days=rng.randint(20, 400))
                ended = today - dt.timedelta(days=rng.randint(1, 15)) if rng.random() < 0.15 else None
                billable = rng.random() > 0.05
                seat = db.session.scalar(db.select(Seat).filter_by(
                    company_id=company.id, product_id=product.id, user_email=email))
                if seat is None:
                    db.session.add(Seat(company=company, product=product, user_email=email,
                                        active_from=started, active_to=ended, billable=billable))
                seats += 1
    db.session.commit()
    return {"companies": len(DEMO_COMPANIES), "products": len(products), "seats": seats}


def register_cli(app: Flask) -> None:
    from .sync.cli import register_sync_cli

    register_sync_cli(app)

    @app.cli.command("create-admin")
    @click.argument("email")
    @click.option("--password", help="Password to set (default: a generated one, printed once).")
    def create_admin(email: str, password: str | None):
        """Create (or reset) an admin account."""
        _user, password = create_user(email, "admin", password)
        db.session.commit()
        click.echo(f"Admin {email.strip().lower()} is ready. Password: {password}")

    @app.cli.command("create-user")
    @click.argument("email")
    @click.option("--role", type=click.Choice(ROLES), default="viewer")
    @click.option("--password")
    def create_user_command(email: str, role: str, password: str | None):
        """Create (or reset) an account with a role."""
        _user, password = create_user(email, role, password)
        db.session.commit()
        click.echo(f"{role} {email.strip().lower()} is ready. Password: {password}")

    @app.cli.command("seed-demo")
    def seed_demo():
        """Demo companies, products and seats (idempotent)."""
        summary = seed_demo_data()
        click.echo("Demo data: {companies} companies, {products} products, {seats} seats.".format(**summary))

    @app.cli.command("serve")
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", default=5000, type=int)
    def serve(host: str, port: int):
        """Serve SeatSync in one process (embedded default): web, job queue worker and cron tick."""
        from werkzeug.serving import run_simple

        from .queue import ensure_embedded_worker

        # Started now rather than on the first request, so schedules run even before anyone visits.
        ensure_embedded_worker(app)
        run_simple(host, port, app, threaded=True)

    @app.cli.command("enqueue-ping")
    @click.option("--wait/--no-wait", default=True)
    def enqueue_ping(wait: bool):
        """Run a trivial job through the queue (checks that workers are alive)."""
        from .jobs import ping
        from .queue import enqueue, wait_for_job

        job = enqueue(ping)
        if wait:
            status = str(getattr(wait_for_job(job, timeout=30), "value", ""))
            click.echo(f"job {job.id}: {status} ({job.return_value()!r})")
            if status != "finished":
                raise SystemExit(1)
