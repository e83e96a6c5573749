"""The agent's state directory: what it must remember across restarts.

``agent.json`` holds the enrollment, the release being delivered and the
versions that failed (so a broken release is reported once, not retried in a
loop). ``outbox/`` holds reports not yet accepted by the server, one file each,
sent oldest first: a report is deleted only after the server answers 202, so
reports written while offline or before a crash are never lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepack import ConfigError, loads_strict
from edgepack._atomic import atomic_write

__all__ = ["AgentState", "Outbox", "write_atomic"]


write_atomic = atomic_write  # kept for callers in this package


@dataclass
class AgentState:
    """Persistent agent state (``agent.json``)."""

    server: str = ""
    device_id: str | None = None
    group: str | None = None
    pending: dict[str, Any] | None = None
    failed_versions: list[int] = field(default_factory=list)
    #: [assigned, active] of the last fleet rollback refused (reported once, re-checked every step)
    refused_rollback: list[int] | None = None
    consecutive_failures: int = 0
    last_contact: float | None = None

    @classmethod
    def load(cls, state_dir: Path) -> AgentState:
        """Read ``agent.json`` (a fresh state if there is none).

        Raises:
            ConfigError: the file exists but is not valid agent state.
        """
        path = state_dir / "agent.json"
        if not path.exists():
            return cls()
        try:
            doc = loads_strict(path.read_bytes(), what=str(path))
            return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        except (TypeError, AttributeError, ValueError) as e:
            raise ConfigError(f"agent state is damaged: {e}", where=str(path),
                              hint="move the file away; the agent will enroll again") from e

    def save(self, state_dir: Path) -> None:
        write_atomic(state_dir / "agent.json", json.dumps(asdict(self), indent=1, sort_keys=True).encode())


class Outbox:
    """Reports queued on disk until the server accepts them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, report: dict[str, Any]) -> Path:
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        path = self.dir / name
        write_atomic(path, json.dumps(report, sort_keys=True).encode())
        return path

    def pending(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Queued reports, oldest first (unreadable files are skipped and removed)."""
        for path in sorted(self.dir.glob("*.json")):
            try:
                yield path, json.loads(path.read_bytes())
            except (OSError, ValueError):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json")))
