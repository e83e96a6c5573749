"""Fuzzing every JSON endpoint from the URL map (issue 8 item 2): random and mutated bodies,
headers, query strings and credentials; only 2xx/4xx JSON answers are acceptable.

Bounded by the ``fuzz-ci`` profile; the long run is ``benchmarks/fuzz_long.py --target http``.
Rate limits are off in this app (0): the fuzzer sends wrong credentials on purpose, and a
locked-out client would only ever see 429s (the limits have their own tests).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fuzz import FUZZ_PROFILE
from support.fuzz_http import HttpFuzz


@pytest.fixture
def http_fuzz(fleet_config, release_key):
    from fleet_server import create_app

    app = create_app(dataclasses.replace(fleet_config, enroll_failure_limit=0, login_failure_limit=0,
                                         admin_auth_failure_limit=0))
    yield HttpFuzz(app, release_key)
    app.extensions["edgepack_fleet"].db.dispose()


def test_every_json_endpoint_answers_fuzzed_requests_with_2xx_or_4xx_json(http_fuzz):
    seen: dict[str, set[int]] = {}

    @settings(settings.get_profile(FUZZ_PROFILE), max_examples=200)
    @given(st.data())
    def run(data):
        x = data.draw(http_fuzz.strategy())
        rule, method = http_fuzz.routes[x["route"]]
        seen.setdefault(f"{method} {rule.rule}", set()).add(http_fuzz.run(x))

    run()
    assert len(http_fuzz.routes) >= 25
    assert len(seen) >= len(http_fuzz.routes) // 2, sorted(seen)  # the draws spread over the URL map
    assert any(code < 300 for codes in seen.values() for code in codes)  # some inputs got past every check


def test_the_fuzzer_covers_every_api_route(http_fuzz, app):
    api = {(r.rule, m) for r in app.url_map.iter_rules() if r.rule.startswith("/api/")
           for m in r.methods - {"HEAD", "OPTIONS"}}
    assert {(r.rule, m) for r, m in http_fuzz.routes} == api
