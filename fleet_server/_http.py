"""Request helpers shared by the blueprints: the running fleet, JSON bodies, validation."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, request

from edgepack import EdgepackError, loads_strict

from ._errors import BadRequestError

__all__ = ["NAME_RE", "check_name", "fleet", "json_body", "opt", "small_uint", "tags_of"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: an int-only field lands in an INTEGER column: PostgreSQL's is 32-bit (out of range is a driver
#: error, a 500), SQLite's 64-bit (beyond it sqlite3 raises OverflowError)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def fleet() -> Any:
    """The ``Fleet`` services object of the running app."""
    return current_app.extensions["edgepack_fleet"]


def json_body() -> dict[str, Any]:
    """The request body as a JSON object (strict: no duplicate keys, no NaN).

    Raises:
        BadRequestError: if the body is not a JSON object.
    """
    raw = request.get_data(cache=True)
    try:
        doc = loads_strict(raw or b"", what="request body")
    except EdgepackError as e:
        raise BadRequestError(f"malformed JSON: {e.message}", where="body",
                              hint="send a UTF-8 JSON object with Content-Type: application/json") from e
    if not isinstance(doc, dict):
        raise BadRequestError("the body must be a JSON object", where="body")
    return doc


def small_uint(value: str | None) -> int | None:
    """``value`` as an int if it is 1-9 ASCII digits (so it fits every INTEGER column), else None.

    ``str.isdigit`` alone admits '\u00b2' and other scripts' digits, which ``int()`` refuses or reads.
    """
    if value and len(value) <= 9 and value.isascii() and value.isdigit():
        return int(value)
    return None


def opt(doc: dict[str, Any], key: str, typ: type | tuple[type, ...], default: Any = None, *,
        required: bool = False) -> Any:
    """``doc[key]`` checked against ``typ`` (bool is never an int here).

    Raises:
        BadRequestError: if required and missing, or of the wrong type.
    """
    if key not in doc or doc[key] is None:
        if required:
            raise BadRequestError(f"field {key!r} is required", where=key)
        return default
    v = doc[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        names = "/".join(t.__name__ for t in types)
        raise BadRequestError(f"field {key!r} must be {names}, got {type(v).__name__}", where=key)
    if types == (int,) and not INT_MIN <= v <= INT_MAX:
        raise BadRequestError(f"field {key!r} is outside {INT_MIN}..{INT_MAX}", where=key)
    return v


def check_name(value: Any, what: str) -> str:
    """Raises BadRequestError unless ``value`` is a safe name (no '/', no '..')."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise BadRequestError(f"{what} {value!r} is not a valid name", where=what,
                              hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def tags_of(value: Any, where: str = "tags") -> dict[str, str]:
    """Validate a tags object: up to 32 short string keys and values.

    Raises:
        BadRequestError: on anything else.
    """
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 32:
        raise BadRequestError("tags must be an object of at most 32 entries", where=where)
    for k, v in value.items():
        if not NAME_RE.match(k) or not isinstance(v, str) or len(v) > 256:
            raise BadRequestError(f"tag {k!r} must be a name mapped to a string of at most 256 characters",
                                  where=where)
    return dict(value)
