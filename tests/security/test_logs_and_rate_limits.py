"""No secrets in logs over a full run on real loopback HTTP, and rate limits on
enrollment and login (issue 8 item 6)."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from support.models import onnx_linear

from edgepack import generate_key
from edgepack._device_auth import sign_request


def _private_forms(key) -> list[str]:
    """Every text form a private key could leak in: PEM body, raw hex (both cases)."""
    raw = key._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    pem = key.private_pem().decode()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return [raw.hex(), raw.hex().upper(), body, "PRIVATE KEY-----"]


class _Http:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: bytes | None = None, headers=None):
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def call_h(self, method: str, path: str, body: bytes | None = None, headers=None):
        """Like ``call``, plus the response headers."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers


@pytest.fixture
def served(tmp_path, trust_file):
    """The app with a random session secret and a TUF repository (so the online and federated keys
    are in use), served by werkzeug on 127.0.0.1 with its access log on.

    Yields (app, http, {what: secret text}) for every secret the server or its operators hold.
    """
    from werkzeug.serving import make_server

    from edgepack import load_signing_key, save_key_pair
    from fleet_server import FleetConfig, create_app
    from fleet_server._publish import create_tuf

    secret = secrets.token_urlsafe(36)
    instance = tmp_path / "instance"
    held = {"session secret": secret}
    roots = []
    for i in range(2):
        k = generate_key()
        roots.append(save_key_pair(k, tmp_path / "offline", f"root{i}")[0])
        held.update({f"root key {i} form {j}": f for j, f in enumerate(_private_forms(k))})
    create_tuf(instance, roots, 2, ["default"])
    for name in ("online", "federated"):
        k = load_signing_key(instance / "tuf" / f"{name}.key")
        held.update({f"{name} key form {j}": f for j, f in enumerate(_private_forms(k))})
    cfg = FleetConfig(instance_dir=instance, database_url=f"sqlite:///{tmp_path / 'fleet.db'}",
                      secret_key=secret, release_trust=trust_file, tick_interval_s=0, report_tick_interval_s=0)
    app = create_app(cfg)
    assert app.extensions["edgepack_fleet"].publisher.kind == "tuf"
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield app, _Http(f"http://127.0.0.1:{srv.server_port}"), held
    srv.shutdown()
    t.join(10)
    app.extensions["edgepack_fleet"].db.dispose()


def _log_everything_at_debug(caplog) -> None:
    caplog.set_level(logging.DEBUG)  # root, so every library logger propagates at DEBUG
    for name in ("fleet_server", "werkzeug", "sqlalchemy.engine", "sqlalchemy.pool", "tuf", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)


def _assert_no_secret_in_the_logs(caplog, secrets_: dict[str, str], keys: dict[str, object]) -> str:
    """Grep every captured record (message and traceback) for each secret text and for every private
    form of each key in ``keys``; return the log text for further checks."""
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    # SQL statements with their bound parameters were captured too: a token stored in clear would show here
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records), "SQL log not captured"
    wanted = dict(secrets_)
    for what, key in keys.items():
        wanted.update({f"{what} form {i}": f for i, f in enumerate(_private_forms(key))})
    leaked = [what for what, s in wanted.items() if s in text]
    assert not leaked, f"secrets in the logs: {leaked}"
    return text


def test_a_full_run_at_debug_level_logs_no_token_or_private_key(served, bundle, release_key, caplog):
    app, http, held = served
    _log_everything_at_debug(caplog)
    from fleet_server._bp_admin import create_admin_token

    admin = create_admin_token(app.extensions["edgepack_fleet"].db, "log-admin")
    ah = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    st, b = http.call("POST", "/api/v1/admin/enrollment-tokens", json.dumps({"group": "default"}).encode(), ah)
    assert st == 201, b
    enroll_token = json.loads(b)["token"]
    dev_key = generate_key()
    enroll = json.dumps({"token": enroll_token, "public_key": dev_key.public.raw.hex(), "name": "cam1"}).encode()
    st, b = http.call("POST", "/api/v1/enroll", enroll, {"Content-Type": "application/json"})
    assert st == 201, b
    dev = json.loads(b)["device_id"]
    # failure paths log too: a reused one-time token, a wrong admin token, a failed dashboard login
    assert http.call("POST", "/api/v1/enroll", enroll, {"Content-Type": "application/json"})[0] == 401
    assert http.call("GET", "/api/v1/admin/devices", None, {"Authorization": f"Bearer {admin}x"})[0] == 401
    cookie, csrf = _login_form(http)
    form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    assert http.call("POST", "/login", f"token={admin}x&csrf_token={csrf}".encode(), form)[0] == 401
    assert http.call("POST", "/login", f"token={admin}&csrf_token={csrf}".encode(), form)[0] in (200, 302)
    st, b = http.call("POST", "/api/v1/admin/releases", bundle.read_bytes(),
                      {"Authorization": f"Bearer {admin}", "Content-Type": "application/octet-stream"})
    assert st == 201, b
    st, b = http.call("POST", "/api/v1/admin/rollouts",
                      json.dumps({"release": {"name": "digits", "version": 1}, "group": "default"}).encode(), ah)
    assert st == 201, b
    path = f"/api/v1/devices/{dev}/assignment"
    st, b = http.call("GET", path, None, sign_request(dev_key, dev, "GET", path, b""))
    assert st == 200, b
    assert json.loads(b)["release"]["version"] == 1, b  # the check-in really delivered the rollout
    st, b = http.call("GET", "/tuf/metadata/timestamp.json")  # signed with the online key just now
    assert st == 200, b
    hb = json.dumps({"active_version": 1, "state": {"charging": True}}).encode()
    path = f"/api/v1/devices/{dev}/heartbeat"
    st, b = http.call("POST", path, hb, {**sign_request(dev_key, dev, "POST", path, hb),
                                         "Content-Type": "application/json"})
    assert st in (200, 204), b

    text = _assert_no_secret_in_the_logs(caplog, {"admin token": admin, "enrollment token": enroll_token, **held},
                                         {"release private key": release_key, "device private key": dev_key})
    assert "/api/v1/enroll" in text and "/assignment" in text, "the access log was not captured"


def test_a_federated_round_and_a_parameter_upload_at_debug_level_log_no_token_or_private_key(
        served, base_bundle, champion, eval_npz, caplog):
    """The rest of a full run: a round is created, a device downloads its global params and uploads a
    signed device update, the close promotes the candidate and signs it with the online federated
    key, and an admin uploads a parameter update (.epu) for the release."""
    from edgepack import Trust, load_signing_key
    from edgepack._params import encode_param_update, parse_param_update
    from edgepack.federated._update import encode_plain
    from fleet_server._bp_admin import create_admin_token

    app, http, held = served
    assert {f"{k} key form 0" for k in ("online", "federated")} <= set(held)  # the online TUF keys are searched
    _log_everything_at_debug(caplog)
    (W0, b0), (W1, b1) = champion
    admin = create_admin_token(app.extensions["edgepack_fleet"].db, "fl-admin")
    ah = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    st, b = http.call("POST", "/api/v1/admin/releases", base_bundle.read_bytes(),
                      {"Authorization": f"Bearer {admin}", "Content-Type": "application/octet-stream"})
    assert st == 201, b
    st, b = http.call("POST", "/api/v1/admin/enrollment-tokens", json.dumps({"group": "default"}).encode(), ah)
    enroll_token = json.loads(b)["token"]
    dev_key = generate_key()
    st, b = http.call("POST", "/api/v1/enroll", json.dumps({"token": enroll_token, "name": "fl1",
                      "public_key": dev_key.public.raw.hex()}).encode(), {"Content-Type": "application/json"})
    assert st == 201, b
    dev = json.loads(b)["device_id"]

    def signed(method: str, path: str, body: bytes = b"", ctype: str = "application/json"):
        return http.call(method, path, body or None, {**sign_request(dev_key, dev, method, path, body),
                                                      "Content-Type": ctype})

    hb = json.dumps({"active_version": 1, "state": {"charging": True, "idle": True, "wifi": True}}).encode()
    assert signed("POST", f"/api/v1/devices/{dev}/heartbeat", hb)[0] in (200, 204)
    st, b = http.call("POST", "/api/v1/admin/rounds", json.dumps({
        "model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 1,
        "evaluation": {"path": str(eval_npz), "threshold": 0.0}}).encode(), ah)
    assert st == 201, b
    rnd = json.loads(b)
    st, b = signed("GET", f"/api/v1/devices/{dev}/round")
    assert st == 200 and json.loads(b)["round"]["round_id"] == rnd["id"], b  # the global params went out
    assert set(json.loads(b)["round"]["params"]) == {"W", "b"}
    blob = encode_plain(dev_key, {"W": W1 - W0, "b": b1 - b0}, round_id=rnd["id"], base_version=1,
                        device_id=dev, num_samples=80)
    st, b = signed("POST", f"/api/v1/devices/{dev}/rounds/{rnd['id']}/update", blob, "application/octet-stream")
    assert st == 200, b
    st, b = http.call("POST", f"/api/v1/admin/rounds/{rnd['id']}/close", None, ah)
    out = json.loads(b)
    assert st == 200 and out["result"]["promoted"] is True and out["result"]["release"]["version"] == 2, out
    federated = load_signing_key(app.extensions["edgepack_fleet"].config.instance_dir / "tuf" / "federated.key")
    epu = (app.extensions["edgepack_fleet"].config.instance_dir / "rounds" / rnd["id"] / "candidate.epu").read_bytes()
    parse_param_update(epu, Trust.of([federated.public]))  # the close really signed with the federated key
    epu3, _ = encode_param_update(model="digits", version=3, base_version=1,
                                  base_artifacts={rnd["artifact"]: ("onnx", onnx_linear(W0, b0))},
                                  new_weights={rnd["artifact"]: {"W": W1, "b": b1}}, keys=[federated])
    st, b = http.call("POST", "/api/v1/admin/releases/1/params", epu3,
                      {"Authorization": f"Bearer {admin}", "Content-Type": "application/octet-stream"})
    assert st == 201 and json.loads(b)["kind"] == "params" and json.loads(b)["version"] == 3, b

    text = _assert_no_secret_in_the_logs(caplog, {"admin token": admin, "enrollment token": enroll_token, **held},
                                         {"device private key": dev_key})
    for route in ("/round ", f"/rounds/{rnd['id']}/update", f"/rounds/{rnd['id']}/close", "/releases/1/params"):
        assert route in text, f"{route} is not in the access log"


def _login_form(http: _Http) -> tuple[str, str]:
    import re

    req = urllib.request.Request(http.base + "/login")
    with urllib.request.urlopen(req, timeout=10) as r:
        cookie = r.headers.get("Set-Cookie", "").split(";")[0]
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', r.read().decode()).group(1)
    return cookie, token


def test_repeated_failed_logins_from_one_client_are_rate_limited_with_429(served):
    app, http, _ = served
    from fleet_server._bp_admin import create_admin_token

    real = create_admin_token(app.extensions["edgepack_fleet"].db, "rl-admin")
    limit = app.extensions["edgepack_fleet"].config.login_failure_limit
    cookie, csrf = _login_form(http)
    form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    codes = [http.call("POST", "/login", f"token=epa_wrong{i}&csrf_token={csrf}".encode(), form)[0]
             for i in range(50)]
    assert set(codes[:3]) == {401}, codes[:3]  # wrong tokens are refused to begin with
    assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}, codes
    # once locked out, even the right token is refused: a guesser cannot tell a hit from a miss
    st, body, headers = http.call_h("POST", "/login", f"token={real}&csrf_token={csrf}".encode(), form)
    assert st == 429 and int(headers["Retry-After"]) > 0
    assert "Too many failed logins" in body.decode() and headers["Content-Type"].startswith("text/html")


def test_repeated_failed_enrollments_from_one_client_are_rate_limited_with_429(served):
    app, http, _ = served
    limit = app.extensions["edgepack_fleet"].config.enroll_failure_limit
    codes = [http.call("POST", "/api/v1/enroll",
                       json.dumps({"token": f"ept_guess{i}", "public_key": "ab" * 32}).encode(),
                       {"Content-Type": "application/json"})[0] for i in range(50)]
    assert set(codes[:3]) == {401}, codes[:3]
    assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}, codes
    st, body, headers = http.call_h("POST", "/api/v1/enroll", json.dumps({"token": "ept_x", "public_key": "ab" * 32})
                                    .encode(), {"Content-Type": "application/json"})
    doc = json.loads(body)
    assert st == 429 and doc["error"] == "RateLimitedError" and 0 < int(headers["Retry-After"]) <= 60
    assert doc["retry_after"] == int(headers["Retry-After"])
