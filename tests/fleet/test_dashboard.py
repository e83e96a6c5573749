"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright):
log in, open a rollout, pause and resume it, and check the page against the database."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                               "(make test installs it: apt-get install chromium)")]


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def live(app, admin, enroll, make_bundle):
    """A served app with a completed v1 rollout, a running v2 rollout, and telemetry."""
    from werkzeug.serving import make_server

    devices = [enroll(name=f"cam-{i}", tags={"site": "north"}) for i in range(10)]
    assert admin.upload(make_bundle(1)).status_code == 201
    admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default", "waves": [100]})
    for i, d in enumerate(devices):
        d.report("install", 1)
        d.heartbeat(1)
        for j in range(12):
            d.report("telemetry", 1, latency_ms=8.0 + (i + j) % 5, drift=0.01 * j,
                     prediction_counts={str(k): (k * 7 + j) % 11 for k in range(10)})
    assert admin.upload(make_bundle(2)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 2}, "group": "default",
                                 "waves": [10, 50, 100], "gates": {"min_reports": 3}})
    devices[0].report("crash", 1, ok=False, reason="watchdog reset")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}", r.json["id"], devices
    server.shutdown()
    t.join(timeout=10)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(15000)
        yield pg
        browser.close()


def _state(fleet, rollout_id: int) -> str:
    from fleet_server._models import Rollout

    with fleet.db.read() as s:
        return s.get(Rollout, rollout_id).state


def test_login_pause_and_resume_a_rollout_and_the_page_agrees_with_the_database(live, page, admin_token, fleet):
    base, rid, devices = live
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/login")
    page.fill("#token", "epa_not-a-token")
    page.click("#login")
    assert "not valid" in page.content()
    page.fill("#token", admin_token)
    page.click("#login")
    assert page.locator("#devices-total").inner_text() == "10"
    assert page.locator("#devices-online").inner_text() == "10"
    shot = os.environ.get("EDGEPACK_DASHBOARD_SCREENSHOT")  # docs/img/dashboard.png is made this way
    if shot:
        page.screenshot(path=shot, full_page=True)
    page.click(f"#rollouts a[href='/rollouts/{rid}']")
    assert page.locator("#rollout-state").inner_text() == "running"
    if shot:
        page.screenshot(path=shot.replace(".png", "-rollout.png"), full_page=True)
    page.click("#btn-pause")
    assert page.locator("#rollout-state").inner_text() == "paused"
    assert _state(fleet, rid) == "paused"
    page.click("#btn-resume")
    assert page.locator("#rollout-state").inner_text() == "running"
    assert _state(fleet, rid) == "running"
    assert [e.split(" · ")[1] for e in page.locator("#events li").all_inner_texts()] == \
        ["started", "paused", "resumed"]
    page.on("dialog", lambda d: d.accept())  # the rollback button asks for confirmation
    page.click("#btn-rollback")
    assert page.locator("#rollout-state").inner_text() == "rolled_back"
    assert _state(fleet, rid) == "rolled_back"


def test_device_page_draws_telemetry_as_inline_svg_and_alerts_are_listed(live, page, admin_token):
    base, _, devices = live
    page.goto(f"{base}/login")
    page.fill("#token", admin_token)
    page.click("#login")
    page.goto(f"{base}/devices/{devices[0].id}")
    charts = page.locator("svg.chart")
    assert charts.count() == 3
    assert "12 samples" in charts.nth(0).get_attribute("aria-label")
    page.goto(f"{base}/alerts")
    assert "watchdog reset" in page.locator("#alerts").inner_text()
    page.click("#alerts button")
    assert "acknowledged" in page.locator("#alerts").inner_text()


def test_form_post_without_csrf_token_is_refused(live, admin_token):
    import urllib.error
    import urllib.parse
    import urllib.request

    base, rid, _ = live
    req = urllib.request.Request(f"{base}/login", data=urllib.parse.urlencode({"token": admin_token}).encode(),
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
