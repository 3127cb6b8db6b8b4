"""The integration screens against the PSA simulator: authenticate, map, schedule, sync and status."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.fixtures.integrations import HOST_FIELD, HX, KINDS, SECRET_FIELD, company, connect, sim_credentials
from webapp.blueprints.integrations import company_page, next_run
from webapp.connections import get_integration
from webapp.extensions import db
from webapp.models import (
    AgreementOverride,
    AuditEvent,
    Company,
    CompanyMapping,
    LineResult,
    Organisation,
    Product,
    ProductMapping,
    SyncRun,
)

SECRET_LABEL = {"connectwise": "Private Key", "kaseya_bms": "Password", "halopsa": "Client Secret"}


# --------------------------------------------------------------------------------------------------
# Tiles and credentials
# --------------------------------------------------------------------------------------------------
def test_available_integrations_shows_a_tile_per_psa_with_its_state(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    connect("connectwise", psa_sim)
    failing = connect("autotask", psa_sim)
    failing.credentials_status = "failing"
    failing.credentials_message = "The API keys were rejected"
    db.session.commit()
    page = client.get("/integrations/").text
    assert "Available Integrations" in page
    assert "ConnectWise Manage" in page and "Autotask PSA" in page and "Kaseya BMS" in page
    assert "connected" in page and "credentials failing" in page and "not set up" in page
    assert "The API keys were rejected" in page


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_credentials_show_the_psas_reason_in_place_and_save_nothing(kind, psa_app, psa_sim, client, login_as):
    login_as("admin")
    form = sim_credentials(kind, psa_sim) | {SECRET_FIELD[kind]: "wrong-secret"}
    response = client.post(f"/integrations/{kind}/credentials", data=form, headers=HX)
    assert response.status_code == 200
    # Only the message, next to the form: the form keeps what was typed.
    assert response.headers["HX-Retarget"] == "#auth-result" and "<form" not in response.text
    assert 'class="banner banner-error" role="alert"' in response.text
    assert "did not accept these credentials" in response.text and "What to do:" in response.text
    assert "wrong-secret" not in response.text
    assert not get_integration(kind).has_credentials


@pytest.mark.parametrize("kind", KINDS)
def test_right_credentials_are_saved_audited_by_field_name_and_never_sent_back(kind, psa_app, psa_sim, client,
                                                                                login_as):
    login_as("admin")
    form = sim_credentials(kind, psa_sim)
    response = client.post(f"/integrations/{kind}/credentials", data=form, headers=HX)
    assert "banner-success" in response.text, response.text
    secret = form[SECRET_FIELD[kind]]
    assert secret not in response.text
    page = client.get(f"/integrations/{kind}/").text
    assert secret not in page and "saved" in page
    assert "Product mappings" in page  # the sections appear once credentials are saved
    integration = get_integration(kind)
    assert integration.credentials_status == "ok" and secret not in integration.credentials_encrypted
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="integration.credentials"))
    assert SECRET_FIELD[kind] in event.after["fields"]
    assert secret not in repr(event.after) + event.summary


def test_an_empty_secret_field_keeps_the_saved_secret(psa_app, psa_sim, client, login_as):
    login_as("admin")
    form = sim_credentials("kaseya_bms", psa_sim)
    client.post("/integrations/kaseya_bms/credentials", data=form, headers=HX)
    again = client.post("/integrations/kaseya_bms/credentials", data=form | {"password": ""}, headers=HX)
    assert "banner-success" in again.text, again.text
    assert db.session.scalars(db.select(AuditEvent).filter_by(kind="integration.credentials")).all().__len__() == 1


@pytest.mark.parametrize("kind", ["connectwise", "kaseya_bms", "halopsa"])
def test_a_new_host_without_its_secrets_is_refused_and_the_saved_secrets_go_nowhere(kind, psa_app, psa_sim, client,
                                                                                     login_as):
    login_as("admin")
    other_host = psa_sim.host.replace("127.0.0.1", "localhost")  # the same simulator under another host name
    psa_app.config["PSA_DEV_HOSTS"] = f"{psa_sim.host},{other_host}"
    form = sim_credentials(kind, psa_sim)
    assert "banner-success" in client.post(f"/integrations/{kind}/credentials", data=form, headers=HX).text
    saved = get_integration(kind).credentials_encrypted
    psa_sim.clear_log()
    secrets = {field: "" for field in ("private_key", "client_id", "password", "client_secret")}
    moved = client.post(f"/integrations/{kind}/credentials", data=form | {HOST_FIELD[kind]: other_host} | secrets,
                        headers=HX)
    assert "changed from" in moved.text and f"enter the {SECRET_LABEL[kind]} again" in moved.text
    assert "only ever sent to the host they were saved for" in moved.text
    assert psa_sim.requests() == []  # nothing, let alone a saved secret, reached the new host
    assert get_integration(kind).credentials_encrypted == saved
    retyped = client.post(f"/integrations/{kind}/credentials", data=form | {HOST_FIELD[kind]: other_host},
                          headers=HX)
    assert "banner-success" in retyped.text, retyped.text


def test_a_pasted_connectwise_address_is_shortened_to_the_host_and_the_admin_is_told(psa_app, psa_sim, client,
                                                                                     login_as):
    login_as("admin")
    form = sim_credentials("connectwise", psa_sim) | {"site": f"https://{psa_sim.host}/v4_6_release/services"}
    response = client.post("/integrations/connectwise/credentials", data=form, headers=HX)
    assert "banner-success" in response.text, response.text
    assert "was shortened to the host" in response.text
    assert f'value="{psa_sim.host}"' in response.text


def test_an_http_connectwise_site_is_refused(psa_app, psa_sim, client, login_as):
    login_as("admin")
    form = sim_credentials("connectwise", psa_sim) | {"site": "http://na.myconnectwise.net"}
    response = client.post("/integrations/connectwise/credentials", data=form, headers=HX)
    assert "only reached over HTTPS" in response.text
    assert not get_integration("connectwise").has_credentials


def test_only_an_admin_changes_credentials(psa_app, psa_sim, client, login_as):
    login_as("billing")
    response = client.post("/integrations/connectwise/credentials", data=sim_credentials("connectwise", psa_sim))
    assert response.status_code == 403


# --------------------------------------------------------------------------------------------------
# Status, products, scope, schedule, options
# --------------------------------------------------------------------------------------------------
def test_a_disabled_integration_sends_nothing_while_browsing_or_on_sync_now(psa_app, psa_sim, client, login_as):
    login_as("admin")
    integration = connect("connectwise", psa_sim, enabled=False)
    db.session.add(CompanyMapping(integration=integration, company=company("Acme Dental"), psa_company_id="1",
                                  agreement_id="1", agreement_name="Managed"))
    db.session.commit()
    psa_sim.clear_log()
    page = client.get("/integrations/connectwise/").text
    assert "Sync now is unavailable" in page and "disabled" in page
    assert "Load ConnectWise Manage products" in page  # editable, but nothing fetched unasked
    client.get("/integrations/connectwise/companies")
    answer = client.post("/integrations/connectwise/sync", headers=HX)
    assert "Sync now is unavailable" in answer.text
    client.post(f"/integrations/connectwise/companies/{company('Acme Dental').id}/sync", headers=HX)
    assert psa_sim.requests("connectwise") == []


def test_enabling_needs_saved_credentials_and_is_audited(psa_app, psa_sim, client, login_as):
    login_as("admin")
    refused = client.post("/integrations/autotask/status", data={"enabled": "on"}, headers=HX)
    assert "Authenticate before enabling" in refused.text
    connect("autotask", psa_sim, enabled=False)
    client.post("/integrations/autotask/status", data={"enabled": "on"}, headers=HX)
    assert get_integration("autotask").enabled
    assert db.session.scalar(db.select(AuditEvent).filter_by(kind="integration.status")).after == {"enabled": True}


@pytest.mark.parametrize("kind", KINDS)
def test_products_map_to_live_psa_products_or_services(kind, psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect(kind, psa_sim)
    page = client.get(f"/integrations/{kind}/").text
    assert "Endpoint Backup" in page  # a PSA product from the simulator, offered on the right
    product = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    options = client.get(f"/integrations/{kind}/products/options", query_string={"product": product.id, "q": "backup"},
                         headers=HX).text
    assert "Endpoint Backup" in options and "Email Security" not in options
    psa_id = options.split('<option value="', 2)[2].split('"', 1)[0]
    response = client.post(f"/integrations/{kind}/products", data={f"product-{product.id}": psa_id}, headers=HX)
    assert "Product mappings saved" in response.text
    mapping = db.session.scalar(db.select(ProductMapping))
    assert (mapping.product_id, mapping.psa_product_id, mapping.psa_product_name) == (product.id, psa_id,
                                                                                     "Endpoint Backup")
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="integration.product_mappings"))
    assert event.after == {"Endpoint Backup": f"Endpoint Backup (#{psa_id})"}  # names, not bare ids


def test_the_product_list_is_cached_briefly_and_refreshable(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("autotask", psa_sim)
    client.get("/integrations/autotask/")
    psa_sim.clear_log()
    client.get("/integrations/autotask/")
    assert psa_sim.requests("autotask") == []
    client.get("/integrations/autotask/products?refresh=1", headers=HX)
    assert psa_sim.requests("autotask")


def test_psa_scope_is_saved_and_limits_the_company_picker(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("connectwise", psa_sim)
    section = client.get("/integrations/connectwise/scope", headers=HX).text
    assert "Client" in section and "Prospect" in section
    client_type = section.split('name="type_ids" value="')[1].split('"')[0]
    types = {}
    for chunk in section.split('name="type_ids" value="')[1:]:
        types[chunk.split("</label>")[0].rsplit(">", 1)[-1].strip()] = chunk.split('"')[0]
    client_type = types["Client"]
    client.post("/integrations/connectwise/scope", data={"type_ids": [client_type]}, headers=HX)
    assert get_integration("connectwise").scope["type_ids"] == [client_type]
    editor = client.get(f"/integrations/connectwise/companies/{company('Acme Dental').id}/edit", headers=HX).text
    assert "Acme Dental" in editor and "Prospect Bakery" not in editor


def test_the_schedule_shows_the_next_run_in_the_organisations_time_zone(psa_app, psa_sim, client, login_as):
    login_as("billing")
    Organisation.get().timezone = "Europe/Paris"
    connect("kaseya_bms", psa_sim)
    response = client.post("/integrations/kaseya_bms/schedule", headers=HX,
                           data={"schedule_kind": "weekly", "schedule_weekday": "4", "schedule_time": "23:30"})
    assert "Sync schedule saved" in response.text
    assert "Friday" in response.text and "23:30" in response.text and "Europe/Paris" in response.text
    integration = get_integration("kaseya_bms")
    assert (integration.schedule_kind, integration.schedule_weekday, integration.schedule_time) == (
        "weekly", 4, dt.time(23, 30))
    # Thursday 2025-03-06 23:00 UTC is Friday 00:00 in Paris: the next run is that Friday 23:30 Paris time.
    upcoming = next_run(integration, dt.datetime(2025, 3, 6, 23, 0, tzinfo=dt.UTC))
    assert upcoming == dt.datetime.fromisoformat("2025-03-07T23:30:00+01:00")
    integration.schedule_kind = "daily"
    upcoming = next_run(integration, dt.datetime(2025, 3, 7, 23, 0, tzinfo=dt.UTC))  # 00:00 on the 8th in Paris
    assert upcoming == dt.datetime.fromisoformat("2025-03-08T23:30:00+01:00")


def test_keep_history_is_offered_for_connectwise_only(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("connectwise", psa_sim)
    connect("autotask", psa_sim)
    assert "Keep history" in client.get("/integrations/connectwise/").text
    assert "Keep history" not in client.get("/integrations/autotask/").text
    client.post("/integrations/autotask/options", headers=HX,
                data={"push_month": "month_to_date", "keep_history": "on", "review_before_push": "on"})
    options = get_integration("autotask").options
    assert options["push_month"] == "month_to_date" and options["review_before_push"] is True
    assert options["keep_history"] is False and options["create_missing_lines"] is False


# --------------------------------------------------------------------------------------------------
# Company mapping
# --------------------------------------------------------------------------------------------------
def test_the_company_table_searches_filters_pages_and_escapes_names(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    integration = connect("connectwise", psa_sim)
    db.session.add_all([Company(name=f"Zeta {i:03d}") for i in range(60)])
    db.session.add(CompanyMapping(integration=integration, company=company("Cedar Law Group"), excluded=True))
    db.session.add(CompanyMapping(integration=integration, company=company("Acme Dental"), psa_company_id="1",
                                  agreement_id="2", status="error", status_reason="HTTP 404"))
    db.session.commit()
    page = client.get("/integrations/connectwise/companies").text
    assert "70 companies" in page and "page 1 of 2" in page
    assert "Ivy &amp; Oak &lt;Interiors&gt;" in page and "<Interiors>" not in page
    second = client.get("/integrations/connectwise/companies?page=2", headers=HX | {"HX-Target": "company-table"})
    assert "<html" not in second.text and "Zeta 059" in second.text
    found = client.get("/integrations/connectwise/companies?q=  ivy ").text
    assert "1 company match" in found
    assert company_page(integration, flt="excluded").total == 1
    assert company_page(integration, flt="error").rows[0][0].name == "Acme Dental"
    assert company_page(integration, flt="unmapped").total == 68
    assert company_page(integration, search="100%").total == 0  # LIKE wildcards are literal


@pytest.mark.parametrize("kind", KINDS)
def test_the_inline_editor_maps_a_company_to_an_active_agreement_only(kind, psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect(kind, psa_sim)
    acme = company("Acme Dental")
    editor = client.get(f"/integrations/{kind}/companies/{acme.id}/edit", headers=HX).text
    assert 'class="editor-row"' in editor and "Acme Dental" in editor
    choice = next(part.split('"')[0] for part in editor.split('<option value="')[1:] if "Acme Dental" in part)
    agreements = client.get(f"/integrations/{kind}/companies/{acme.id}/agreements",
                            query_string={"psa_company": choice}, headers=HX).text
    assert "Managed Services" in agreements and "Old agreement" not in agreements
    agreement_id = agreements.split('<option value="')[2].split('"')[0]
    refused = client.post(f"/integrations/{kind}/companies/{acme.id}", data={"psa_company": choice, "agreement": ""},
                          headers=HX)
    assert "cannot be saved without one" in refused.text
    assert db.session.scalar(db.select(CompanyMapping)) is None
    saved = client.post(f"/integrations/{kind}/companies/{acme.id}",
                        data={"psa_company": choice, "agreement": agreement_id}, headers=HX)
    assert saved.text.lstrip().startswith("<tr") and "Managed Services" in saved.text
    mapping = db.session.scalar(db.select(CompanyMapping))
    assert mapping.is_mapped and mapping.psa_company_name == "Acme Dental" and mapping.status == "never synced"
    assert db.session.scalar(db.select(AuditEvent).filter_by(kind="company_mapping.saved"))


def test_an_agreement_of_another_company_is_refused(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("connectwise", psa_sim)
    acme, bluebird = company("Acme Dental"), company("Bluebird Logistics")
    editor = client.get(f"/integrations/connectwise/companies/{acme.id}/edit", headers=HX).text
    values = [p.split('"')[0] for p in editor.split('<option value="')[1:]]
    options = {v.split(":", 1)[1]: v for v in values if ":" in v}
    other = client.get(f"/integrations/connectwise/companies/{acme.id}/agreements",
                       query_string={"psa_company": options["Bluebird Logistics"]}, headers=HX).text
    foreign = other.split('<option value="')[2].split('"')[0]
    refused = client.post(f"/integrations/connectwise/companies/{acme.id}", headers=HX,
                          data={"psa_company": options["Acme Dental"], "agreement": foreign})
    assert "not an active agreement of this company" in refused.text
    assert bluebird and db.session.scalar(db.select(CompanyMapping)) is None


def test_suggest_matches_proposes_exact_names_skips_ambiguous_and_never_overwrites(psa_app, psa_sim, client,
                                                                                   login_as):
    login_as("billing")
    integration = connect("autotask", psa_sim)
    db.session.add(Company(name="  evergreen CLINIC "))  # a second SeatSync company of that name: ambiguous
    db.session.add(CompanyMapping(integration=integration, company=company("Acme Dental"), psa_company_id="999",
                                  psa_company_name="Kept", agreement_id="1", agreement_name="Kept"))
    db.session.commit()
    page = client.get("/integrations/autotask/companies/suggest").text
    assert "Bluebird Logistics" in page and "Evergreen Clinic" in page  # the ambiguous one is listed as skipped
    assert 'value="' + str(company("Acme Dental").id) + '" id="keep-' not in page
    assert 'name="company" value="' + str(company("Evergreen Clinic").id) not in page
    assert "Juniper Pediatrics" not in page  # no such PSA company
    form = {"company": [], **{}}
    for part in page.split('name="company" value="')[1:]:
        company_id = part.split('"')[0]
        form["company"].append(company_id)
        form[f"psa_company-{company_id}"] = page.split(f'name="psa_company-{company_id}" value="')[1].split('"')[0]
        select = page.split(f'name="agreement-{company_id}"')[1].split("</select>")[0]
        form[f"agreement-{company_id}"] = select.split('<option value="')[1].split('"')[0]
    client.post("/integrations/autotask/companies/suggest", data=form)
    mappings = {m.company.name: m for m in db.session.scalars(db.select(CompanyMapping))}
    assert mappings["Acme Dental"].psa_company_name == "Kept"
    bluebird = mappings["Bluebird Logistics"]
    assert bluebird.is_mapped and "Managed Services" in bluebird.agreement_name
    assert "Evergreen Clinic" not in mappings


def test_exclude_toggles_and_the_excluded_filter_finds_it(psa_app, psa_sim, client, login_as):
    login_as("billing")
    integration = connect("connectwise", psa_sim)
    juniper = company("Juniper Pediatrics")
    row = client.post(f"/integrations/connectwise/companies/{juniper.id}/exclude", headers=HX).text
    assert "excluded" in row and "Include" in row
    assert company_page(integration, flt="excluded").rows[0][0].name == "Juniper Pediatrics"
    client.post(f"/integrations/connectwise/companies/{juniper.id}/exclude", headers=HX)
    assert company_page(integration, flt="excluded").total == 0


def test_queued_rows_poll_every_two_seconds_and_stop_when_done(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    integration = connect("connectwise", psa_sim)
    mapping = CompanyMapping(integration=integration, company=company("Acme Dental"), psa_company_id="1",
                             agreement_id="1", status="queued")
    db.session.add(mapping)
    db.session.commit()
    url = f"/integrations/connectwise/companies/{mapping.company_id}/row"
    assert 'hx-trigger="every 2s"' in client.get(url, headers=HX).text
    mapping.status, mapping.last_sync_at = "updated", dt.datetime(2025, 1, 31, 23, 30, tzinfo=dt.UTC)
    Organisation.get().timezone = "Europe/Paris"
    db.session.commit()
    done = client.get(url, headers=HX).text
    assert "every 2s" not in done and "updated" in done and "2025-02-01 00:30" in done


def test_the_progress_bar_polls_while_the_run_is_live(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    integration = connect("connectwise", psa_sim)
    run = SyncRun(integration=integration, trigger="sync_now", state="running", total=3, done=1)
    db.session.add(run)
    db.session.commit()
    live = client.get("/integrations/connectwise/progress", headers=HX)
    assert "1 of 3 companies" in live.text and 'hx-trigger="every 2s"' in live.text
    run.state, run.done, run.updated = "finished", 3, 2
    db.session.commit()
    done = client.get("/integrations/connectwise/progress", headers=HX)
    assert "every 2s" not in done.text and "3 of 3 companies" in done.text
    assert done.headers["HX-Trigger"] == "sync-finished"


def test_details_show_before_target_after_and_the_hint_of_a_failure(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    integration = connect("connectwise", psa_sim)
    acme = company("Acme Dental")
    mapping = CompanyMapping(integration=integration, company=acme, psa_company_id="1", agreement_id="7",
                             status="error", status_reason="The agreement no longer exists")
    backup = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    email = db.session.scalar(db.select(Product).filter_by(name="Email Security"))
    run = SyncRun(integration=integration, trigger="sync_now", state="finished")
    db.session.add_all([mapping, run])
    db.session.flush()
    db.session.add_all([
        LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=backup.id, psa_product_id="11",
                   agreement_id="7", before=5, target=8, after=8, action="updated", changed_in_psa=True),
        LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=email.id, psa_product_id="12",
                   agreement_id="7", before=None, target=3, after=None, action="error", http_status=404,
                   message="Agreement not found", hint="the agreement no longer exists — edit the mapping"),
    ])
    db.session.commit()
    page = client.get(f"/integrations/connectwise/companies/{acme.id}").text
    assert "Endpoint Backup" in page and ">5<" in page and ">8<" in page and "updated" in page
    assert "changed in ConnectWise Manage since the last sync" in page
    assert "Agreement not found" in page and "HTTP 404" in page and "edit the mapping" in page


def test_details_tell_seatsyncs_own_reasons_from_the_psas_and_an_unreadable_quantity(psa_app, psa_sim, client,
                                                                                      login_as):
    login_as("viewer")
    integration = connect("kaseya_bms", psa_sim)
    acme = company("Acme Dental")
    mapping = CompanyMapping(integration=integration, company=acme, psa_company_id="1", agreement_id="7")
    backup = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    email = db.session.scalar(db.select(Product).filter_by(name="Email Security"))
    run = SyncRun(integration=integration, trigger="sync_now", state="finished")
    db.session.add_all([mapping, run])
    db.session.flush()
    db.session.add_all([
        LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=backup.id, psa_product_id="11",
                   agreement_id="7", line_id="900", before=None, target=8, after=8, action="updated"),
        LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=email.id, psa_product_id="",
                   agreement_id="7", target=3, action="needs_attention",
                   message="product “Email Security” is not mapped to a PSA product"),
    ])
    db.session.commit()
    page = client.get(f"/integrations/kaseya_bms/companies/{acme.id}").text
    assert "Kaseya BMS's API does not report a line's current quantity" in page
    assert "<strong>Why:</strong> product “Email Security” is not mapped" in page
    assert "Kaseya BMS said:" not in page


def test_a_viewer_sees_everything_and_no_edit_controls(psa_app, psa_sim, client, login_as):
    login_as("viewer")
    connect("connectwise", psa_sim)
    settings = client.get("/integrations/connectwise/").text
    assert "Product mappings" in settings and "Sync schedule" in settings
    assert "<fieldset disabled>" in settings and ">Save</button>" not in settings.split('id="products-title"')[1]
    assert ">Sync now</button>" not in settings
    table = client.get("/integrations/connectwise/companies").text
    assert "Acme Dental" in table and "Details" in table
    assert "Edit mapping of" not in table and "Suggest matches<" not in table and ">Exclude<" not in table


@pytest.mark.parametrize("kind", KINDS)
def test_the_inline_editor_bills_one_product_on_another_agreement_of_the_same_company(
        kind, psa_app, psa_sim, client, login_as):
    login_as("billing")
    integration = connect(kind, psa_sim)
    harbor, backup = company("Harbor Marine Supply"), Product(name="Offsite Backup Seats")
    db.session.add(backup)
    db.session.flush()
    db.session.add(ProductMapping(integration_id=integration.id, product_id=backup.id, psa_product_id="1"))
    db.session.commit()
    editor = client.get(f"/integrations/{kind}/companies/{harbor.id}/edit", headers=HX).text
    choice = next(part.split('"')[0] for part in editor.split('<option value="')[1:] if "Harbor Marine" in part)
    agreements = client.get(f"/integrations/{kind}/companies/{harbor.id}/agreements",
                            query_string={"psa_company": choice}, headers=HX).text
    ids = {part.split(">", 1)[1].split("<")[0].strip(): part.split('"')[0]
           for part in agreements.split('<option value="')[2:]}
    default = next(i for name, i in ids.items() if "Managed Services" in name)
    separate = next(i for name, i in ids.items() if "Separate Backup" in name)
    refused = client.post(f"/integrations/{kind}/companies/{harbor.id}", headers=HX, data={
        "psa_company": choice, "agreement": default, f"override-{backup.id}": "999999"})
    assert "not an active agreement of this company" in refused.text
    assert db.session.scalar(db.select(AgreementOverride)) is None

    saved = client.post(f"/integrations/{kind}/companies/{harbor.id}", headers=HX, data={
        "psa_company": choice, "agreement": default, f"override-{backup.id}": separate})
    assert saved.text.lstrip().startswith("<tr"), saved.text
    override = db.session.scalar(db.select(AgreementOverride))
    assert (override.product_id, override.agreement_id) == (backup.id, separate)
    assert "Separate Backup" in override.agreement_name
    assert db.session.scalar(db.select(AuditEvent).filter_by(kind="company_mapping.overrides"))
    editor = client.get(f"/integrations/{kind}/companies/{harbor.id}/edit", headers=HX).text
    assert "Products billed on another" in editor and f'value="{separate}" selected' in editor

    client.post(f"/integrations/{kind}/companies/{harbor.id}", headers=HX, data={
        "psa_company": choice, "agreement": default, f"override-{backup.id}": ""})
    db.session.expire_all()
    assert db.session.scalar(db.select(AgreementOverride)) is None  # back on the mapping's agreement
