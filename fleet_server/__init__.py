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
from ._param_releases import param_trust, store_param_update
from ._publish import (
    ParamsDeliveryUnavailableError,
    Publisher,
    StoragePublisher,
    TufPublisher,
    publish_release,
    release_target,
    target_path,
    withdraw_release,
)
from ._storage import LocalStorage, Storage
from ._tuf import TufRepository
from ._tuf_root import rotate_root

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
    "ParamsDeliveryUnavailableError",
    "PayloadTooLargeError",
    "Publisher",
    "RolloutStateError",
    "Storage",
    "StoragePublisher",
    "TufPublisher",
    "TufRepository",
    "UnknownDeviceError",
    "create_app",
    "load_config",
    "param_trust",
    "publish_release",
    "release_target",
    "rotate_root",
    "store_param_update",
    "target_path",
    "withdraw_release",
]
