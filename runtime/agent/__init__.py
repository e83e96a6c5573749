"""The device agent (``edgepack device run``): TUF-verified delivery into the A/B store.

Imports only the base dependencies (the standard library, numpy, cryptography,
tuf and the edgepack core), like the rest of ``runtime``.
"""

from ._agent import Agent
from ._config import AgentConfig, next_delay
from ._delta import bundle_target_path, delta_target_path, params_target_path
from ._download import DownloadResult, download_resumable
from ._errors import (
    DownloadInterruptedError,
    EndlessDataError,
    EnrollmentError,
    ServerRefusedError,
    ServerUnreachableError,
    TargetMismatchError,
    TargetNotTrustedError,
    TufVerificationError,
)
from ._install import Installer, StoreInstaller
from ._participant import RoundParticipant, load_local_data, read_conditions
from ._state import AgentState, Outbox
from ._tuf_client import RefreshStats, TufClient

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentState",
    "DownloadInterruptedError",
    "DownloadResult",
    "EndlessDataError",
    "EnrollmentError",
    "Installer",
    "Outbox",
    "RefreshStats",
    "RoundParticipant",
    "ServerRefusedError",
    "ServerUnreachableError",
    "StoreInstaller",
    "TargetMismatchError",
    "TargetNotTrustedError",
    "TufClient",
    "TufVerificationError",
    "bundle_target_path",
    "delta_target_path",
    "download_resumable",
    "load_local_data",
    "next_delay",
    "params_target_path",
    "read_conditions",
]
