"""CSV import: the whole file is checked first, bad files import nothing, re-imports change nothing."""

import datetime as dt

import pytest

from webapp import seats_import
from webapp.extensions import db
from webapp.models import AuditEvent, Company, Organisation, Product, Seat

HEADER = "company,company_external_id,product,user_email,active_from,active_to,billable\n"
GOOD = HEADER + (
    "Acme Dental,acme,Password Manager,Ann@Acme.example,2025-01-01,,true\n"
    "Acme Dental,acme,Password Manager,bob@acme.example,2025-01-15 09:30,2025-03-01,yes\n"
    "Cedar Law,,Endpoint Backup,carl@cedar.example,2024-12-31T23:00:00Z,,false\n"
)


@pytest.fixture
def products(app):
    org = Organisation.get()
    org.timezone = "Europe/Berlin"
    rows = [Product(name="Password Manager"), Product(name="Endpoint Backup")]
    db.session.add_all(rows)
    db.session.commit()
    return rows


def counts_of_rows():
    return db.session.query(Company).count(), db.session.query(Seat).count()


def errors(csv_text, **kw):
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    plan = seats_import.validate(data, **kw)
    return [(e.line, e.reason) for e in plan.errors]


def test_a_good_file_imports_companies_and_seats(products):
    plan = seats_import.import_file(GOOD.encode(), "seats.csv", actor="billing@msp.example")
    assert plan.ok and plan.rows == 3
    assert counts_of_rows() == (2, 3)
    bob = db.session.scalar(db.select(Seat).filter_by(user_email="bob@acme.example"))
    assert bob.active_from == dt.datetime(2025, 1, 15, 8, 30, tzinfo=dt.UTC)  # 09:30 in Berlin
    assert bob.active_to == dt.datetime(2025, 2, 28, 23, 0, tzinfo=dt.UTC)
    ann = db.session.scalar(db.select(Seat).filter_by(user_email="ann@acme.example"))
    assert ann.active_to is None and ann.billable
    carl = db.session.scalar(db.select(Seat).filter_by(user_email="carl@cedar.example"))
    assert not carl.billable and carl.company.external_id is None
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="seats.imported"))
    assert event.target == "seats.csv" and "3 new seats" in event.summary


def test_importing_the_same_file_twice_changes_nothing(products):
    seats_import.import_file(GOOD.encode())
    before = [(s.id, s.active_from, s.active_to, s.billable, s.updated_at) for s in db.session.query(Seat)]
    plan = seats_import.import_file(GOOD.encode())
    assert plan.ok and plan.changes == 0 and plan.unchanged == 3
    db.session.expire_all()
    assert [(s.id, s.active_from, s.active_to, s.billable, s.updated_at) for s in db.session.query(Seat)] == before
    assert counts_of_rows() == (2, 3)
    assert db.session.query(AuditEvent).filter_by(kind="seats.imported").count() == 1


def test_a_changed_row_updates_the_seat_and_the_preview_says_so(products):
    seats_import.import_file(GOOD.encode())
    changed = GOOD.replace("2025-01-15 09:30,2025-03-01,yes", "2025-01-15 09:30,2025-04-01,no")
    plan = seats_import.validate(changed.encode())
    assert (len(plan.new_seats), len(plan.seat_updates), plan.unchanged) == (0, 1, 2)
    assert any("bob@acme.example" in s and "billable true → false" in s for s in plan.samples)
    assert counts_of_rows() == (2, 3)  # a preview writes nothing
    seats_import.apply(plan)
    bob = db.session.scalar(db.select(Seat).filter_by(user_email="bob@acme.example"))
    assert not bob.billable and bob.active_to == dt.datetime(2025, 3, 31, 22, tzinfo=dt.UTC)


def test_one_bad_row_imports_nothing_and_every_bad_row_is_listed(products):
    bad = HEADER + (
        "Acme Dental,acme,Password Manager,ann@acme.example,2025-01-01,,true\n"  # line 2 good
        "Acme Dental,acme,Password Manager,bob@acme.example,31/01/2025,,true\n"  # 3 bad date
        "Acme Dental,acme,Password Manager,carl@acme.example,2025-01-01,,nah\n"  # 4 bad billable
        "Acme Dental,acme,Password Manager,dan@acme.example,2025-02-01,2025-01-01,true\n"  # 5 to before from
        "Acme Dental,acme,Password Manager,ANN@acme.example,2025-01-01,,true\n"  # 6 duplicate of 2
        "Acme Dental,acme,Password Manager,not-an-email,2025-01-01,,true\n"  # 7 bad e-mail
        "Acme Dental,acme,Password Manager,eve@acme.example,2025-01-01,,maybe\n"  # 8 bad billable
        ",,Password Manager,fay@acme.example,2025-01-01,,\n"  # 9 no company
        "Acme Dental,acme,Password Manager,gus@acme.example\n"  # 10 too few values
    )
    found = errors(bad)
    assert [line for line, _ in found] == [3, 4, 5, 6, 7, 8, 9, 10]
    reasons = dict(found)
    assert "bad date '31/01/2025'" in reasons[3]
    assert "bad billable value 'nah'" in reasons[4]
    assert "before active_from" in reasons[5]
    assert "duplicate row" in reasons[6] and "line 2" in reasons[6]
    assert "bad e-mail 'not-an-email'" in reasons[7]
    assert "bad billable value 'maybe'" in reasons[8]
    assert "company is empty" in reasons[9]
    assert "4 values but the header has 7 columns" in reasons[10]
    plan = seats_import.import_file(bad.encode())
    assert not plan.ok
    assert counts_of_rows() == (0, 0)


def test_apply_refuses_a_plan_with_errors(products):
    plan = seats_import.validate((HEADER + "Acme,,Password Manager,a@b.example,2025-01-01,,maybe\n").encode())
    with pytest.raises(ValueError):
        seats_import.apply(plan)


def test_a_failure_while_writing_leaves_nothing_half_imported(products, monkeypatch):
    plan = seats_import.validate(GOOD.encode())
    calls = {"n": 0}
    real_record = seats_import.db.session.execute

    def failing_execute(statement, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the first seat insert, after the new companies were written
            raise RuntimeError("database went away")
        return real_record(statement, *args, **kwargs)

    monkeypatch.setattr(seats_import.db.session, "execute", failing_execute)
    with pytest.raises(RuntimeError):
        seats_import.apply(plan)
    monkeypatch.undo()
    assert counts_of_rows() == (0, 0)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "The file is empty."),
    (b"   \n\n", "The file is empty."),
    (HEADER.encode(), "The file has a header but no rows."),
    (HEADER.replace(",", ";").encode() + b"Acme;;Password Manager;a@b.example;2025-01-01;;\n",
     "separated by semicolons"),
    (HEADER.encode() + "Café Müller,,Password Manager,a@b.example,2025-01-01,,\n".encode("cp1252"), "not UTF-8"),
    ("\ufeff".encode("utf-16") + HEADER.encode("utf-16-le"), "UTF-16"),
    (b"company,product,email,active_from\n", "missing column(s): user_email"),
    (b"company,product,user_email,active_from,active_too\n", "unknown column(s): active_too"),
])
def test_files_that_cannot_be_read_are_refused_with_a_clear_reason(products, data, message):
    found = errors(data)
    assert len(found) == 1 and message in found[0][1], found


def test_a_file_over_50_mb_is_refused(products, monkeypatch):
    monkeypatch.setattr(seats_import, "MAX_BYTES", 1000)
    found = errors(GOOD * 20)
    assert len(found) == 1 and "the limit is 50 MB" in found[0][1]


def test_a_utf8_file_with_byte_order_mark_and_crlf_is_fine(products):
    data = "\ufeff".encode() + GOOD.replace("\n", "\r\n").encode()
    plan = seats_import.validate(data)
    assert plan.ok and plan.rows == 3


def test_line_numbers_count_quoted_values_spanning_lines(products):
    data = HEADER + '"Acme\nDental",acme,Password Manager,ann@acme.example,2025-01-01,,\n' \
                    "Acme,x,Password Manager,bob@acme.example,2025-13-01,,\n"
    assert [line for line, _ in errors(data)] == [4]


def test_an_external_id_given_for_two_names_is_an_error(products):
    data = HEADER + ("Acme Dental,acme,Password Manager,ann@acme.example,2025-01-01,,\n"
                     "Acme Dentistry,acme,Password Manager,bob@acme.example,2025-01-01,,\n")
    (line, reason), = errors(data)
    assert line == 3 and "given for 'Acme Dental' on line 2" in reason


def test_a_known_external_id_renames_the_company_and_a_name_adopts_an_external_id(products):
    db.session.add_all([Company(name="Old Name", external_id="acme"), Company(name="Cedar Law")])
    db.session.commit()
    data = HEADER + ("Acme Dental,acme,Password Manager,ann@acme.example,2025-01-01,,\n"
                     "Cedar Law ,cedar-1,Password Manager,bob@cedar.example,2025-01-01,,\n")
    plan = seats_import.import_file(data.encode())
    assert plan.ok and not plan.new_companies
    assert sorted((c.name, c.external_id) for c in db.session.query(Company)) == [
        ("Acme Dental", "acme"), ("Cedar Law", "cedar-1")]
    assert seats_import.validate(data.encode()).changes == 0


def test_html_in_an_imported_file_is_stored_as_text(products):
    data = HEADER + '"<script>alert(1)</script> Ltd",,Password Manager,ann@acme.example,2025-01-01,,\n'
    seats_import.import_file(data.encode())
    assert db.session.scalar(db.select(Company.name)) == "<script>alert(1)</script> Ltd"


def test_progress_is_reported_for_large_files(products, monkeypatch):
    monkeypatch.setattr(seats_import, "PROGRESS_EVERY", 10)
    rows = "".join(f"Acme,acme,Password Manager,user{i}@acme.example,2025-01-01,,\n" for i in range(100))
    seen = []
    plan = seats_import.import_file((HEADER + rows).encode(), progress=lambda done, total: seen.append((done, total)))
    assert plan.ok and len(seen) >= 10 and seen[-1][0] == seen[-1][1]
    assert counts_of_rows() == (1, 100)


def test_an_import_creates_the_products_it_names_and_lists_them_in_its_preview(products):
    text = GOOD + ("Acme Dental,acme,Email Security,ann@acme.example,2025-01-01,,true\n"
                   "Delta Architects,delta,email security ,dan@delta.example,2025-01-01,,true\n")
    plan = seats_import.validate(text.encode())
    assert plan.ok
    summary = plan.summary()
    assert summary["new_product_names"] == ["Email Security"]  # once, however it is spelled in the file
    assert summary["new_company_names"] == ["Acme Dental", "Cedar Law", "Delta Architects"]
    assert db.session.query(Product).count() == 2  # a preview writes nothing
    seats_import.apply(plan)
    email = db.session.scalar(db.select(Product).filter_by(name="Email Security"))
    assert {s.user_email for s in db.session.scalars(db.select(Seat).filter_by(product_id=email.id))} == {
        "ann@acme.example", "dan@delta.example"}


def test_an_import_that_fails_midway_creates_no_product_and_no_company(products, monkeypatch):
    text = GOOD + "Delta Architects,delta,Email Security,dan@delta.example,2025-01-01,,true\n"
    plan = seats_import.validate(text.encode())
    monkeypatch.setattr(seats_import, "insert", lambda *_: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        seats_import.apply(plan)
    assert db.session.query(Product).count() == 2 and counts_of_rows() == (0, 0)
