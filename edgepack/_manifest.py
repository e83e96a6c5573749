"""The bundle manifest (format v1): typed access, strict validation, and
round-tripping of fields this reader does not know (python-tuf's
``unrecognized_fields`` idea), so a newer writer's fields survive an older reader.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from ._errors import ManifestSchemaError

__all__ = ["SCHEMA", "ArtifactEntry", "Manifest", "format_time", "parse_time"]

SCHEMA = "edgepack.manifest/v1"
ARTIFACT_FORMATS = ("onnx", "tflite")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: object, where: str) -> dt.datetime:
    if not isinstance(s, str) or not s.endswith("Z"):
        raise ManifestSchemaError(f"{where} must be an RFC 3339 UTC time like 2030-01-01T00:00:00Z", where=where)
    try:
        return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as e:
        raise ManifestSchemaError(f"{where} is not a valid time: {s!r}", where=where) from e


def _require(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestSchemaError(f"required field {where}.{key} is missing", where=f"{where}.{key}",
                                  hint="rebuild the bundle with a current edgepack")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ManifestSchemaError(f"{where}.{key} must be {name}, got {type(v).__name__}", where=f"{where}.{key}")
    return v


def check_member_path(path: str, where: str) -> str:
    """A member path is relative, uses '/', and has no '..' or empty parts."""
    from ._errors import PathTraversalError

    if (
        not path
        or path.startswith(("/", "\\"))
        or "\\" in path
        or re.match(r"^[A-Za-z]:", path)
        or any(part in ("", ".", "..") for part in path.split("/"))
        or "\x00" in path
    ):
        raise PathTraversalError(f"unsafe member path {path!r}", where=where,
                                 hint="member paths must be relative, without '..' or absolute parts")
    return path


@dataclass
class ArtifactEntry:
    path: str
    format: str
    precision: str
    sha256: str
    size: int
    parity: dict[str, Any] = field(default_factory=dict)
    unrecognized: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"artifacts[{self.path}]"
        check_member_path(self.path, where)
        if not self.path.startswith("artifacts/"):
            raise ManifestSchemaError("artifact paths live under artifacts/", where=where)
        if self.format not in ARTIFACT_FORMATS:
            raise ManifestSchemaError(f"artifact format must be one of {ARTIFACT_FORMATS}, got {self.format!r}", where=where)
        if not _HEX64.match(self.sha256):
            raise ManifestSchemaError("sha256 must be 64 lowercase hex digits", where=where)
        if self.size < 0:
            raise ManifestSchemaError("size must be >= 0", where=where)

    @classmethod
    def from_dict(cls, d: object, i: int) -> ArtifactEntry:
        where = f"manifest.artifacts[{i}]"
        if not isinstance(d, dict):
            raise ManifestSchemaError(f"{where} must be an object", where=where)
        d = dict(d)
        vals = {k: _require(d, k, t, where) for k, t in
                (("path", str), ("format", str), ("precision", str), ("sha256", str), ("size", int))}
        parity = d.get("parity", {})
        if not isinstance(parity, dict):
            raise ManifestSchemaError(f"{where}.parity must be an object", where=where)
        rest = {k: v for k, v in d.items() if k not in (*vals, "parity")}
        return cls(**vals, parity=parity, unrecognized=rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(self.unrecognized),
            "path": self.path, "format": self.format, "precision": self.precision,
            "sha256": self.sha256, "size": self.size, "parity": copy.deepcopy(self.parity),
        }


@dataclass
class Manifest:
    """What a bundle holds. ``io``, ``lineage`` and ``golden`` stay plain dicts:
    their inner fields are validated by whoever consumes them (runtime, fleet)."""

    name: str
    version: int
    created_at: str
    expires_at: str
    artifacts: list[ArtifactEntry]
    io: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    golden: dict[str, Any] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    schema: str = SCHEMA
    unrecognized: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schema != SCHEMA:
            raise ManifestSchemaError(f"unsupported manifest schema {self.schema!r} (this reader knows {SCHEMA})",
                                      where="manifest.schema", hint="upgrade edgepack")
        if not _NAME_RE.match(self.name):
            raise ManifestSchemaError(f"name {self.name!r} must match {_NAME_RE.pattern}", where="manifest.name")
        if self.version < 0:
            raise ManifestSchemaError("version must be >= 0", where="manifest.version")
        created = parse_time(self.created_at, "manifest.created_at")
        expires = parse_time(self.expires_at, "manifest.expires_at")
        if expires <= created:
            raise ManifestSchemaError("expires_at must be after created_at", where="manifest.expires_at")
        paths = [a.path for a in self.artifacts]
        if len(set(paths)) != len(paths):
            raise ManifestSchemaError("two artifacts share one path", where="manifest.artifacts")
        if self.golden:
            for k in ("path", "sha256", "size"):
                if k not in self.golden:
                    raise ManifestSchemaError(f"golden.{k} is missing", where="manifest.golden")
            check_member_path(self.golden["path"], "manifest.golden.path")
        for r in self.reports:
            if not isinstance(r, dict) or not {"path", "sha256", "size"} <= set(r):
                raise ManifestSchemaError("each report needs path, sha256 and size", where="manifest.reports")
            check_member_path(r["path"], "manifest.reports")

    @property
    def expires(self) -> dt.datetime:
        return parse_time(self.expires_at, "manifest.expires_at")

    def members(self) -> dict[str, tuple[str, int]]:
        """Every member the manifest vouches for: path -> (sha256, size)."""
        out = {a.path: (a.sha256, a.size) for a in self.artifacts}
        if self.golden:
            out[self.golden["path"]] = (self.golden["sha256"], int(self.golden["size"]))
        for r in self.reports:
            out[r["path"]] = (r["sha256"], int(r["size"]))
        return out

    def artifact(self, path: str) -> ArtifactEntry:
        for a in self.artifacts:
            if a.path == path:
                return a
        raise KeyError(path)

    @classmethod
    def from_dict(cls, d: object) -> Manifest:
        """Raises: ManifestSchemaError if a required field is missing or mistyped."""
        where = "manifest"
        if not isinstance(d, dict):
            raise ManifestSchemaError("the manifest must be a JSON object", where=where)
        d = dict(d)
        schema = _require(d, "schema", str, where)
        name = _require(d, "name", str, where)
        version = _require(d, "version", int, where)
        created = _require(d, "created_at", str, where)
        expires = _require(d, "expires_at", str, where)
        arts = _require(d, "artifacts", list, where)
        parts: dict[str, Any] = {k: d.get(k, {}) for k in ("io", "lineage", "golden")}
        for k, v in parts.items():
            if not isinstance(v, dict):
                raise ManifestSchemaError(f"manifest.{k} must be an object", where=f"manifest.{k}")
        parts["reports"] = d.get("reports", [])
        if not isinstance(parts["reports"], list):
            raise ManifestSchemaError("manifest.reports must be a list", where="manifest.reports")
        known = {"schema", "name", "version", "created_at", "expires_at", "artifacts", "io", "lineage",
                 "golden", "reports"}
        return cls(
            name=name, version=version, created_at=created, expires_at=expires,
            artifacts=[ArtifactEntry.from_dict(a, i) for i, a in enumerate(arts)],
            schema=schema, unrecognized={k: v for k, v in d.items() if k not in known}, **parts,
        )

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.unrecognized)
        out.update(
            schema=self.schema, name=self.name, version=self.version,
            created_at=self.created_at, expires_at=self.expires_at,
            artifacts=[a.to_dict() for a in self.artifacts],
            io=copy.deepcopy(self.io), lineage=copy.deepcopy(self.lineage),
        )
        if self.golden:
            out["golden"] = copy.deepcopy(self.golden)
        if self.reports:
            out["reports"] = copy.deepcopy(self.reports)
        return out
