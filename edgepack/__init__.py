"""edgepack: ship models to edge fleets, and check every step.

The shared core: the bundle format, signing and trust, errors, and config.
Everything here imports with only the base dependencies (numpy, cryptography).
"""

from ._archive import ArchiveLimits
from ._bundle import (
    BundleBuilder,
    OpenedBundle,
    VerifiedBundle,
    open_bundle,
    sign_bundle,
    verify_bundle,
)
from ._canonical import canonical_bytes, loads_strict
from ._errors import *  # noqa: F403  (the error hierarchy is public by design)
from ._errors import __all__ as _error_names
from ._keys import (
    PublicKey,
    SigningKey,
    generate_key,
    load_public_key,
    load_signing_key,
    save_key_pair,
)
from ._manifest import SCHEMA, ArtifactEntry, Manifest
from ._params import ParamUpdate, apply_param_update, encode_param_update, parse_param_update
from ._signing import Signature, verify_threshold
from ._trust import Trust, load_trust
from ._weights import ParamFormatError, read_weights

__version__ = "0.1.0"

__all__ = [
    "SCHEMA",
    "ArchiveLimits",
    "ArtifactEntry",
    "BundleBuilder",
    "Manifest",
    "OpenedBundle",
    "ParamFormatError",
    "ParamUpdate",
    "PublicKey",
    "Signature",
    "SigningKey",
    "Trust",
    "VerifiedBundle",
    "__version__",
    "apply_param_update",
    "encode_param_update",
    "canonical_bytes",
    "generate_key",
    "load_public_key",
    "load_signing_key",
    "load_trust",
    "loads_strict",
    "open_bundle",
    "parse_param_update",
    "read_weights",
    "save_key_pair",
    "sign_bundle",
    "verify_bundle",
    "verify_threshold",
    *_error_names,
]
