"""The edgepack fleet server: enrollment, health-gated rollouts, TUF delivery, dashboard.

Start it with ``edgepack fleet init`` then ``edgepack fleet serve``; embed it
with ``create_app(config)``. Never imports torch or tensorflow.
"""

from ._app import Fleet, create_app
from ._config import FleetConfig, load_config
from ._db import Database
from ._errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RolloutStateError,
    UnknownDeviceError,
)
from ._gates import GateConfig
from ._publish import Publisher, StoragePublisher, TufPublisher, target_path
from ._storage import LocalStorage, Storage

__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "Database",
    "Fleet",
    "FleetConfig",
    "ForbiddenError",
    "GateConfig",
    "LocalStorage",
    "NotFoundError",
    "PayloadTooLargeError",
    "Publisher",
    "RolloutStateError",
    "Storage",
    "StoragePublisher",
    "TufPublisher",
    "UnknownDeviceError",
    "create_app",
    "load_config",
    "target_path",
]
