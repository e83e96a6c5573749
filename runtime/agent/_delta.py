"""Where a parameter update's delta lives, next to its full file.

A parameter update (``edgepack._params``, ``.epu``) can be encoded ``whole``
(the new tensor values) or as a delta against the weights the device already
runs (``delta-xor``/``delta-add``), which for a fine-tune is usually several
times smaller. The fleet server publishes the full file at
``params/<model>/<model>-<v>.epu`` and, only when it is smaller, the delta at
``delta_target_path(full, base_version)``. Both are TUF targets signed by the
federated role; the device rebuilds the artifact from either and the install
store checks the rebuilt artifact against the signed ``result_sha256``.
"""

from __future__ import annotations

__all__ = ["bundle_target_path", "delta_target_path", "params_target_path"]


def bundle_target_path(group: str, name: str, version: int) -> str:
    """The TUF target path of bundle ``version`` of ``name`` in ``group``'s delegated role."""
    return f"groups/{group}/{name}-{int(version)}.edgepack"


def params_target_path(model: str, version: int) -> str:
    """The TUF target path of the full parameter update ``version`` of ``model``."""
    return f"params/{model}/{model}-{int(version)}.epu"


def delta_target_path(full_target: str, base_version: int) -> str:
    """The TUF target path of the delta that rebuilds ``full_target`` from ``base_version``."""
    stem = full_target.removesuffix(".epu")
    return f"{stem}.from-{int(base_version)}.epu"
