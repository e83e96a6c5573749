"""The simulation's one error class."""

from __future__ import annotations

from .._errors import FleetError

__all__ = ["SimulationError"]


class SimulationError(FleetError):
    """``edgepack fl simulate`` could not set up or drive its local fleet (exit code 12, as FleetError):
    a missing package, a server or device process that did not start, or a step that timed out.
    The message names the log file to read."""
