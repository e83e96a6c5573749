"""Where a build's files go: a staging directory inside the destination whose
finished files are moved into place with ``os.replace``, so an interrupted or
failed build never leaves a half-written bundle or report."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import _report
from ._errors import OutputDirError

__all__ = ["Staging", "tool_versions"]

_TOOLS = ("edgepack", "numpy", "torch", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common", "tensorflow-cpu",
          "keras", "tf2onnx", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def tool_versions() -> dict[str, str]:
    """Versions of every tool that touched the artifacts (manifest lineage)."""
    out = {}
    for t in _TOOLS:
        try:
            out[t] = importlib.metadata.version(t)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


class Staging:
    """A staging directory for one build.

    Raises (from the constructor):
        OutputDirError: the destination cannot be created or written.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        try:
            if final.exists() and not final.is_dir():
                raise OutputDirError(f"output {final} exists and is not a directory", where=str(final),
                                     hint="choose another -o/--out")
            final.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=".staging-", dir=final))
            probe = self.path / ".probe"
            probe.write_bytes(b"")  # os.access lies for root and read-only mounts; a real write does not
            probe.unlink()
        except OutputDirError:
            raise
        except OSError as e:
            raise OutputDirError(f"output directory {final} is not writable: {e.strerror or e}", where=str(final),
                                 hint="choose a writable -o/--out, or fix its permissions") from e

    def commit_reports(self, report: dict[str, Any], bundle_name: str | None = None) -> tuple[Path, Path]:
        """Write the reports, then move every staged file into the destination."""
        (self.path / "report.json").write_bytes(_report.to_json(report))
        (self.path / "report.html").write_text(_report.html(report), encoding="utf-8")
        for f in sorted(self.path.iterdir(), key=lambda p: p.name == bundle_name):
            os.replace(f, self.final / f.name)  # the bundle goes last: reports never point at a missing file
        return self.final / "report.json", self.final / "report.html"

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
