"""Every name, id, hash and header pattern anchors at the true end of the string.

``re.match(r"^...$")`` accepts one trailing newline (``$`` matches before it), so a
name like ``"model\\n"`` passed every check and reached file names, storage keys and
signed-request parsing. The patterns now end in ``\\Z``; one case per validator.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgepack import EdgepackError
from edgepack._device_auth import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    parse_headers,
)
from edgepack._manifest import Manifest
from fleet_server._http import check_name
from fleet_server._storage import check_key

GOOD_HEADERS = {HEADER_DEVICE: "d-1", HEADER_TIMESTAMP: "1700000000", HEADER_NONCE: "a" * 32,
                HEADER_SIGNATURE: "b" * 128}


def _manifest(name: str) -> Manifest:
    return Manifest(name=name, version=1, created_at="2026-01-01T00:00:00Z", expires_at="2027-01-01T00:00:00Z",
                    artifacts=[])


def _headers(which: str) -> Callable[[str], object]:
    return lambda v: parse_headers({**GOOD_HEADERS, which: v})


@pytest.mark.parametrize(("check", "good"), [
    (_manifest, "digits"),
    (lambda v: check_name(v, "group"), "field"),
    (check_key, "releases/digits-1.edgepack"),
    (_headers(HEADER_DEVICE), "d-1"),
    (_headers(HEADER_NONCE), "a" * 32),
    (_headers(HEADER_SIGNATURE), "b" * 128),
], ids=["manifest name", "group name", "storage key", "device header", "nonce header", "signature header"])
def test_a_trailing_newline_is_refused_where_the_plain_value_passes(check, good) -> None:
    check(good)
    with pytest.raises(EdgepackError):
        check(good + "\n")
