"""Every federated error is a typed edgepack error and inherits an exit code the CLI documents."""

from __future__ import annotations

import pytest

import edgepack
import edgepack.federated as fed
from edgepack import EXIT_CODES, EdgepackError

ERRORS = [getattr(fed, n) for n in fed.__all__ if n.endswith("Error")]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_federated_error_subclasses_an_edgepack_base_with_a_known_exit_code(cls: type) -> None:
    assert issubclass(cls, EdgepackError) and cls.__module__.startswith("edgepack.federated")
    assert any(b.__module__ == "edgepack._errors" and b is not EdgepackError for b in cls.__mro__)
    assert cls.exit_code in EXIT_CODES and cls.exit_code != 1
    err = cls("what", where="here", hint="how")
    assert err.one_line() == "what (at here); fix: how"


def test_no_federated_name_shadows_a_core_name() -> None:
    assert not set(fed.__all__) & set(edgepack.__all__)
