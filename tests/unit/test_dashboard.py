from webapp.extensions import db
from webapp.models import Integration, SyncRun


def test_dashboard_names_each_psa_and_links_to_its_page_and_runs(client, login_as):
    login_as("viewer")
    integration = Integration(kind="autotask", enabled=True, credentials_status="failing",
                              credentials_message="The API user or secret was rejected")
    db.session.add(integration)
    db.session.flush()
    db.session.add(SyncRun(integration_id=integration.id, trigger="sync_now", state="finished", total=3, done=3))
    db.session.commit()
    page = client.get("/").text
    assert '<a href="/integrations/autotask/">Autotask PSA</a>' in page
    assert "The API user or secret was rejected" in page
    assert "/runs/" in page and "3 of 3" in page and "sync now" in page


def test_dashboard_points_a_new_install_to_integrations(client, login_as):
    login_as("viewer")
    assert "Connect one under Integrations" in client.get("/").text
