"""Fuzzing every JSON endpoint of the fleet server (issue 8 item 2), shared by
tests/security/test_fuzz_http.py and benchmarks/fuzz_long.py.

The routes come from the app's URL map (every ``/api/`` rule and method), so a new route
is fuzzed without anyone listing it. Each input picks a route, URL arguments, query
parameters, a body (random JSON, a valid body for that route with one field replaced,
or raw bytes), extra headers, and a credential: none, a wrong admin token, the real
admin token, the enrolled device's signature, or a signature by a key the server does not
know. The only acceptable answers are 2xx or 4xx with a JSON body; a 5xx, a non-JSON
answer or an exception out of the test client is a crash.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import numpy as np
from hypothesis import strategies as st

from edgepack import BundleBuilder, generate_key
from edgepack._device_auth import sign_request

from .fuzz import json_values, replace_field
from .models import onnx_linear

__all__ = ["HttpFuzz"]

#: a valid-looking body per endpoint: the starting point for structure-aware mutations
BODIES: dict[str, dict[str, Any]] = {
    "device.enroll": {"token": "epe_x", "public_key": "ab" * 32, "name": "cam", "tags": {"site": "a"}},
    "device.report": {"kind": "install", "release_version": 1, "ok": True, "reason": None, "data": {"stage": "load"}},
    "device.heartbeat": {"active_version": 1, "state": {"charging": True, "idle": True, "wifi": True}},
    "admin.new_admin_token": {"name": "ci"},
    "admin.new_enrollment_token": {"group": "default", "expires_in_s": 3600, "tags": {"k": "v"}},
    "admin.create_group": {"name": "lab"},
    "admin.patch_device": {"tags": {"a": "b"}, "group": "default", "status": "active"},
    "rollouts.start": {"release": {"name": "digits", "version": 1}, "group": "default", "waves": [50, 100],
                       "gates": {"min_reports": 1, "max_failure_rate": 0.2}, "timing": {"wave_deadline_s": 60}},
    "rollouts.action": {"reason": "checking"},
    "rounds.create": {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 1,
                      "fraction": 1.0, "quorum": 1, "deadline_s": 60, "codecs": ["none", "int8"],
                      "policy": {"max_norm": 10.0}, "eligibility": {"charging": True}},
}
QUERY_KEYS = ["limit", "tag", "group", "page", "per_page", "actor", "action", "model"]
HEADER_KEYS = ["Content-Type", "X-Edgepack-Device", "X-Edgepack-Timestamp", "X-Edgepack-Nonce",
               "X-Edgepack-Signature", "Authorization", "Content-Length-Extra", "X-Forwarded-For"]
AUTHS = ["none", "bad_admin", "admin", "device", "stranger"]


class HttpFuzz:
    """A fleet app with one admin, one enrolled (eligible) device and one uploaded release."""

    def __init__(self, app: Any, release_key: Any) -> None:
        from fleet_server._bp_admin import create_admin_token, create_enrollment_token

        self.app, self.client = app, app.test_client()
        self.fleet = app.extensions["edgepack_fleet"]
        self.admin = create_admin_token(self.fleet.db, "fuzz")
        self.key, self.stranger = generate_key(), generate_key()
        tok = create_enrollment_token(self.fleet, "default", {}, 3600)["token"]
        r = self.client.post("/api/v1/enroll", json={"token": tok, "public_key": self.key.public.raw.hex()})
        assert r.status_code == 201, r.json
        self.device = r.json["device_id"]
        self._call("POST", f"/api/v1/devices/{self.device}/heartbeat", BODIES["device.heartbeat"], "device")
        b = BundleBuilder("digits", 1, io={"inputs": [{"name": "x", "shape": ["N", 64], "dtype": "float32"}]})
        b.add_artifact("model.onnx", onnx_linear(np.zeros((64, 10), np.float32), np.zeros(10, np.float32)),
                       format="onnx", precision="fp32")
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            data = b.write(Path(d) / "digits-1.edgepack", [release_key]).read_bytes()
        r = self.client.post("/api/v1/admin/releases", data=data, content_type="application/octet-stream",
                             headers={"Authorization": f"Bearer {self.admin}"})
        assert r.status_code == 201, r.json
        self.routes = sorted(((rule, m) for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")
                              for m in rule.methods - {"HEAD", "OPTIONS"}), key=lambda x: (x[0].rule, x[1]))
        self.args = {"device_id": [self.device, "d-0000000000000000", "..", "d-x/../y"], "token_id": ["999", "0"],
                     "alert_id": ["1", "999"], "release_id": ["1", "2"], "rollout_id": ["1", "2"],
                     "action": ["pause", "resume", "abort", "rollback", "explode"], "round_id": ["r-1", "x"]}

    def strategy(self) -> st.SearchStrategy[Any]:
        def body_for(i: int) -> st.SearchStrategy[Any]:
            seed = BODIES.get(self.routes[i][0].endpoint)
            options = [json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)]
            if seed is not None:
                options.append(replace_field(seed).map(lambda v: json.dumps(v).encode()))
                options.append(st.just(json.dumps(seed).encode()))
            return st.one_of(*options)

        def one(i: int) -> st.SearchStrategy[Any]:
            rule = self.routes[i][0]
            return st.fixed_dictionaries({
                "route": st.just(i),
                "args": st.fixed_dictionaries({a: st.sampled_from(self.args[a]) for a in rule.arguments}),
                "query": st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=12), max_size=3),
                "body": body_for(i),
                "headers": st.dictionaries(st.sampled_from(HEADER_KEYS),
                                           st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                                           max_size=2),
                "auth": st.sampled_from(AUTHS),
            })
        return st.integers(0, len(self.routes) - 1).flatmap(one)

    def _call(self, method: str, path: str, body: Any, auth: str, headers: dict[str, str] | None = None) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        if auth in ("admin", "bad_admin"):
            h["Authorization"] = f"Bearer {self.admin}" + ("x" if auth == "bad_admin" else "")
        elif auth in ("device", "stranger"):
            key = self.key if auth == "device" else self.stranger
            h.update(sign_request(key, self.device, method, path, data if method != "GET" else b""))
        return self.client.open(path, method=method, data=data if method != "GET" else None, headers=h)

    def run(self, x: dict[str, Any]) -> int:
        """Send one input; return its status. Raises AssertionError on a crash."""
        rule, method = self.routes[x["route"]]
        path = rule.rule
        for a, v in x["args"].items():
            q = urllib.parse.quote(v, safe="")
            for form in (f"<{a}>", f"<int:{a}>", f"<path:{a}>"):
                path = path.replace(form, q)
        if x["query"]:
            path += "?" + urllib.parse.urlencode(x["query"])
        r = self._call(method, path, x["body"], x["auth"], x["headers"])
        where = f"{method} {path} auth={x['auth']} -> {r.status_code}"
        assert r.status_code < 500, f"{where}: {r.get_data(as_text=True)[:300]}"
        assert r.status_code >= 200 and r.status_code not in range(300, 400), where
        if r.status_code != 204:
            assert r.is_json and isinstance(r.get_json(), (dict, list)), f"{where}: not JSON"
        self._restore()
        return r.status_code

    def _restore(self) -> None:
        """Undo what would end the run's coverage: the device revoked, or moved out of the cohort's group."""
        from sqlalchemy import update

        from fleet_server._models import Device

        with self.fleet.db.write() as s:
            s.execute(update(Device).where(Device.id == self.device, Device.status != "active").values(status="active"))
