"""Federated averaging math: pure functions and small state objects, no web framework.

Streaming aggregation (FedAvg with a float64 accumulator that persists
atomically), server optimizers (FedAvgM, FedAdam, FedYogi), robust options
(clipping, median, trimmed mean, outlier flags), central DP, the signed device
update format with compression and error feedback, validation that returns
rejections as data, and the signed parameter release. Imports with only numpy
and cryptography. See docs/federated.md. The Flower adapter lives in
``edgepack.federated.flower`` and needs ``flwr``.
"""

from ._aggregate import FoldRecord, RoundAccumulator, fedavg, l2_norm
from ._compress import (
    CODECS,
    CompressionConfig,
    EncodedTensor,
    ErrorFeedback,
    compress,
    decode_tensor,
)
from ._dp import CentralDPConfig, DPRecord, dp_clip_scale, finalize_with_dp
from ._errors import (
    AccumulatorStateError,
    AggregationError,
    DeviceUpdateFormatError,
    FederatedConfigError,
    UpdateShapeError,
)
from ._optim import FedAdamConfig, FedAvgConfig, FedAvgMConfig, FedYogiConfig, ServerOptimizer
from ._params import Params, ParamSpec, TensorSpec
from ._release import (
    RELEASE_SCHEMA,
    ParameterRelease,
    ReleaseFn,
    core_param_update_release,
    open_release,
    sign_release,
)
from ._robust import (
    OutlierVerdict,
    SpillStore,
    clip_scale,
    clip_to_norm,
    flag_outlier,
    flag_outlier_by_stats,
)
from ._update import (
    UPDATE_SCHEMA,
    OpenedUpdate,
    UpdateHeader,
    UpdateLimits,
    VerifiedUpdate,
    encode_update,
    open_update,
)
from ._validate import (
    REASONS,
    AcceptedUpdate,
    FoldResult,
    Rejection,
    RoundContext,
    ValidationPolicy,
    fold_update,
    validate_update,
    validate_updates,
)

__all__ = [
    "CODECS",
    "REASONS",
    "RELEASE_SCHEMA",
    "UPDATE_SCHEMA",
    "AcceptedUpdate",
    "AccumulatorStateError",
    "AggregationError",
    "CentralDPConfig",
    "CompressionConfig",
    "DPRecord",
    "DeviceUpdateFormatError",
    "EncodedTensor",
    "ErrorFeedback",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedYogiConfig",
    "FederatedConfigError",
    "FoldRecord",
    "FoldResult",
    "OpenedUpdate",
    "OutlierVerdict",
    "ParamSpec",
    "ParameterRelease",
    "Params",
    "Rejection",
    "ReleaseFn",
    "RoundAccumulator",
    "RoundContext",
    "ServerOptimizer",
    "SpillStore",
    "TensorSpec",
    "UpdateHeader",
    "UpdateLimits",
    "UpdateShapeError",
    "ValidationPolicy",
    "VerifiedUpdate",
    "clip_scale",
    "clip_to_norm",
    "compress",
    "core_param_update_release",
    "decode_tensor",
    "dp_clip_scale",
    "encode_update",
    "fedavg",
    "finalize_with_dp",
    "flag_outlier",
    "flag_outlier_by_stats",
    "fold_update",
    "l2_norm",
    "open_release",
    "open_update",
    "sign_release",
    "validate_update",
    "validate_updates",
]
