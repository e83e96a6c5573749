"""The artifacts a release serves, for rounds that start from a promoted round's release.

A round after a promoted round trains on a ``kind="params"`` release, whose bytes
are an ``.epu`` against an earlier release. Its artifacts are rebuilt the way a
device rebuilds them (``runtime.InstallStore.apply_param_update``): the bundle at
the root of the chain, verified against the release trust, then each update in
version order, verified against the parameter-update trust and checked against
its signed base and result hashes. Nothing unverified is ever read as a model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from edgepack import EdgepackError
from edgepack._params import apply_param_update, parse_param_update

from ._errors import BadRequestError
from ._models import Release

__all__ = ["MAX_CHAIN", "release_artifacts"]

#: parameter updates followed back to their bundle before giving up (a loop guard; versions only grow)
MAX_CHAIN = 1000


def _chain(fleet: Any, rel: Release) -> list[Release]:
    """``rel`` and the releases it was built on, back to a bundle, oldest first."""
    out = [rel]
    with fleet.db.read() as s:
        while out[-1].kind == "params":
            cur = out[-1]
            if cur.base_version is None or len(out) > MAX_CHAIN or cur.base_version >= cur.version:
                raise BadRequestError(f"release {cur.name} v{cur.version} has no usable base version",
                                      where="base_version")
            base = s.scalar(select(Release).where(Release.name == cur.name, Release.version == cur.base_version))
            if base is None:
                raise BadRequestError(f"{cur.name} v{cur.version} is built on v{cur.base_version}, which is gone",
                                      where="base_version")
            out.append(base)
        for r in out[1:]:  # out[0] is the caller's (already detached) row
            s.expunge(r)
    if out[-1].kind != "bundle":
        raise BadRequestError(f"release {out[-1].name} v{out[-1].version} is a {out[-1].kind}, not a bundle",
                              where="base_version", hint="start a round from a bundle or a parameter release")
    return out[::-1]


def release_artifacts(fleet: Any, rel: Release) -> dict[str, bytes]:
    """The verified artifact bytes ``rel`` serves (see the module doc).

    Raises:
        BadRequestError: the chain does not lead back to a bundle, or a link no longer verifies.
    """
    from ._param_releases import _base_artifacts as read_bundle
    from ._param_releases import param_trust

    chain = _chain(fleet, rel)
    try:
        arts = read_bundle(fleet, chain[0])
        assert arts is not None  # _chain ends at a bundle
        trust = param_trust(fleet) if len(chain) > 1 else None
        for link in chain[1:]:
            u, raw = parse_param_update(b"".join(fleet.storage.read_range(link.storage_key)), trust)
            arts = {**arts, **apply_param_update(u, raw, arts)}
    except EdgepackError as e:
        raise BadRequestError(f"cannot rebuild {rel.name} v{rel.version}: {e.one_line()}", where="base_version",
                              hint="start the round from a release that still verifies") from e
    return arts
