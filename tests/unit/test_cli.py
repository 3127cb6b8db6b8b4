from webapp.extensions import db
from webapp.models import Company, Product, Seat, User


def test_create_admin_makes_an_admin_who_can_sign_in(runner, client):
    result = runner.invoke(args=["create-admin", "Boss@MSP.example", "--password", "s3cret-enough"])
    assert result.exit_code == 0 and "boss@msp.example" in result.output
    user = db.session.scalar(db.select(User))
    assert user.role == "admin" and user.check_password("s3cret-enough")
    assert client.post("/login", data={"email": "boss@msp.example", "password": "s3cret-enough"}).status_code == 302


def test_create_admin_without_password_prints_a_generated_one(runner):
    result = runner.invoke(args=["create-admin", "boss@msp.example"])
    password = result.output.rsplit("Password: ", 1)[1].strip()
    assert len(password) >= 12
    assert db.session.scalar(db.select(User)).check_password(password)


def test_seed_demo_is_idempotent(runner):
    first = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    counts = [db.session.scalar(db.select(db.func.count(m.id))) for m in (Company, Product, Seat)]
    runner.invoke(args=["seed-demo"])
    assert [db.session.scalar(db.select(db.func.count(m.id))) for m in (Company, Product, Seat)] == counts
    assert counts[0] == 10 and counts[2] > 50
