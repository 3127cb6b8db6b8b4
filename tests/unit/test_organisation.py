import threading

from webapp.extensions import db
from webapp.models import Organisation


def test_the_organisation_row_is_created_once_even_by_concurrent_first_requests(app):
    barrier = threading.Barrier(4)
    errors = []

    def first_request():
        with app.app_context():
            try:
                barrier.wait()
                Organisation.get()
                db.session.commit()
            except Exception as exc:  # collected: any error fails the test below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert db.session.scalar(db.select(db.func.count(Organisation.id))) == 1


def test_the_organisation_starts_with_the_configured_time_zone(app):
    app.config["ORG_TIMEZONE_DEFAULT"] = "Europe/Amsterdam"
    assert Organisation.get().timezone == "Europe/Amsterdam"
