"""The performance guardrail's CPU side: which int8 format is fast on this CPU.

Public names (stable; ``converters`` imports them):

* ``CpuInfo`` - frozen description of the CPU's integer instructions.
* ``detect_cpu()`` - read ``/proc/cpuinfo`` (Linux) and return a ``CpuInfo``.
* ``parse_cpuinfo(text, machine)`` - the same, from a given cpuinfo text.
* ``OrtInt8Settings`` - the recommended ORT ``quantize_static`` settings, with
  ``why`` (the measurement or source behind them) and ``measured`` (whether
  that ISA class was measured by us or follows ORT's documentation).
* ``recommend_ort_int8(cpu)`` - the settings for a ``CpuInfo`` (default: this
  machine); ``recommended_ort_int8`` is the same function under the name the
  pipeline (``converters._quantize_onnx``) calls.
* ``SpeedVerdict`` / ``compare_latency(quant_ms, fp32_ms, margin=...)`` - is a
  quantized artifact slower than its fp32 sibling, beyond measurement noise?
* ``SLOWDOWN_MARGIN`` - the default noise margin (0.15 = 15 %).

Why this exists: ORT's static-int8 speed depends on the instruction set. On
this project's build machine (AMD EPYC Zen 4, AVX-512 VNNI) EfficientNet-Lite0
with ORT's *default* ``quantize_static`` settings (QDQ, S8S8) ran 0.5-1.6x the
speed of fp32, QOperator S8S8 ran 3.8-5.5x *slower*, and QDQ U8S8 ran 1.05-2.3x
*faster* (``benchmarks/explore_int8_variants.py``, figures in
``docs/perf-guardrail.md``). Only stdlib is imported here, so the CLI can call
it before any heavy import.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SLOWDOWN_MARGIN",
    "CpuInfo",
    "OrtInt8Settings",
    "SpeedVerdict",
    "compare_latency",
    "detect_cpu",
    "parse_cpuinfo",
    "recommend_ort_int8",
    "recommended_ort_int8",
]

# A quantized artifact counts as slower only when its median latency exceeds
# fp32's by more than this fraction. Why 15 %: in one run of
# benchmarks/bench_efficientnet.py --quick on the shared 2-core build VM (other
# jobs running), two *identical* fp32 graphs timed interleaved differed by
# 2-4 % at 1 thread and by 11-19 % at 2 threads; the wrong int8 formats we
# measured are up to 5.5x slower, far outside that. Between separate runs the same
# fp32 session ranged 9.6-23.9 ms p50, which is why both samples must come from
# the same run. A 2-thread verdict on a loaded machine deserves a re-measure.
SLOWDOWN_MARGIN = 0.15

_X86 = {"x86_64", "amd64", "i686", "i386", "x86"}
_ARM = {"aarch64", "arm64", "armv8l", "armv8", "armv7l"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's integer-relevant instruction sets, as booleans.

    ``isa`` is the one class that decides the int8 format (see
    ``recommend_ort_int8``): ``x86-amx``, ``x86-avx512-vnni``, ``x86-avx-vnni``,
    ``x86-avx2``, ``x86-baseline``, ``arm64-i8mm``, ``arm64-dotprod``,
    ``arm64-baseline`` or ``unknown``.
    """

    arch: str  # "x86_64", "aarch64", or what platform.machine() said
    model_name: str = ""
    avx2: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx_int8: bool = False
    asimddp: bool = False  # ARMv8.2 SDOT/UDOT
    i8mm: bool = False  # ARMv8.6 SMMLA/UMMLA

    @property
    def vnni(self) -> bool:
        """x86 8-bit dot-product instructions (VPDPBUSD) of any width."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    @property
    def isa(self) -> str:
        if self.arch in _X86 or self.arch.startswith("x86"):
            if self.amx_int8:
                return "x86-amx"
            if self.avx512_vnni:
                return "x86-avx512-vnni"
            if self.avx_vnni:
                return "x86-avx-vnni"
            return "x86-avx2" if self.avx2 else "x86-baseline"
        if self.arch in _ARM:
            if self.i8mm:
                return "arm64-i8mm"
            return "arm64-dotprod" if self.asimddp else "arm64-baseline"
        return "unknown"

    def to_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "model_name": self.model_name,
            "isa": self.isa,
            "avx2": self.avx2,
            "avx512_vnni": self.avx512_vnni,
            "avx_vnni": self.avx_vnni,
            "amx_int8": self.amx_int8,
            "asimddp": self.asimddp,
            "i8mm": self.i8mm,
        }


def parse_cpuinfo(text: str, machine: str | None = None) -> CpuInfo:
    """Build a ``CpuInfo`` from ``/proc/cpuinfo`` text.

    x86 lists its instructions under ``flags``, ARM under ``Features``; only the
    first processor block is read (Linux reports the same flags on every core).
    ``machine`` defaults to ``platform.machine()``; when the text has an ARM
    ``Features`` line and no ``flags`` line, the arch is taken to be aarch64.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").lower().split())
    arch = (machine or platform.machine() or "").lower()
    if "features" in fields and "flags" not in fields and arch not in _ARM:
        arch = "aarch64"
    elif "flags" in fields and arch not in _X86:
        arch = "x86_64"
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu part", "")
    return CpuInfo(
        arch=arch,
        model_name=model,
        avx2="avx2" in flags,
        avx512_vnni="avx512_vnni" in flags or "avx512vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        amx_int8="amx_int8" in flags,
        asimddp="asimddp" in flags,
        i8mm="i8mm" in flags,
    )


def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    """Detect this machine's CPU; ``isa`` is ``unknown`` where cpuinfo is unreadable.

    No ``cpuid`` call: stdlib cannot issue it, and Linux's flags already
    reflect what the kernel enabled (AVX-512 or AMX can be present in silicon
    yet disabled by the OS, and then the flag is absent, which is what we want).
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return CpuInfo(arch=(platform.machine() or "unknown").lower(), model_name=platform.processor())
    return parse_cpuinfo(text)


@dataclass(frozen=True)
class OrtInt8Settings:
    """Recommended ``onnxruntime.quantization.quantize_static`` settings for one ISA class."""

    activation_type: str  # "uint8" or "int8" (QuantType.QUInt8 / QInt8)
    weight_type: str
    quant_format: str  # "QDQ" or "QOperator"
    reduce_range: bool
    per_channel: bool
    isa: str
    measured: bool  # True: measured by benchmarks/explore_int8_variants.py; False: ORT docs
    why: str

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_MEASURED_VNNI = (
    "Measured on AMD EPYC Zen 4 (avx512_vnni), EfficientNet-Lite0, ORT 1.32, batch 1, "
    "benchmarks/explore_int8_variants.py (docs/perf-guardrail.md): QDQ U8S8 was faster than fp32 "
    "in all 24 measurements (1.05-2.31x); ORT's default QDQ S8S8 was slower in 9 of 20 (0.50-1.62x); "
    "QOperator S8S8 was 3.8-5.5x slower; U8U8 0.76-1.32x. per_channel raised top-1 agreement "
    "0.60->0.82 at no speed cost; reduce_range dropped it to 0.33 (0.75 per-channel) and VNNI "
    "does not need it (no 16-bit saturation)."
)
_AVX2_WHY = (
    "Not measured here (build machine has VNNI). ORT docs: on x86 without VNNI use "
    "U8S8 with reduce_range=True, since VPMADDUBSW saturates 16-bit sums; our VNNI "
    "run showed reduce_range costs accuracy (top-1 0.82->0.75 per-channel), so parity must confirm."
)
_ARM_WHY = (
    "Not measured here (x86 build machine). ORT docs: ARM kernels handle symmetric "
    "S8S8 well, with SDOT/UDOT (asimddp) or SMMLA (i8mm); reduce_range unneeded."
)

# Registry: ISA class -> settings. A new class is one entry, not another branch.
_RECOMMENDATIONS: dict[str, OrtInt8Settings] = {
    isa: OrtInt8Settings("uint8", "int8", "QDQ", False, True, isa, True, _MEASURED_VNNI)
    for isa in ("x86-amx", "x86-avx512-vnni", "x86-avx-vnni")
}
_RECOMMENDATIONS.update(
    {
        isa: OrtInt8Settings("uint8", "int8", "QDQ", True, True, isa, False, _AVX2_WHY)
        for isa in ("x86-avx2", "x86-baseline")
    }
)
_RECOMMENDATIONS.update(
    {
        isa: OrtInt8Settings("int8", "int8", "QDQ", False, True, isa, False, _ARM_WHY)
        for isa in ("arm64-i8mm", "arm64-dotprod", "arm64-baseline")
    }
)
_RECOMMENDATIONS["unknown"] = OrtInt8Settings(
    "uint8", "int8", "QDQ", False, True, "unknown", False,
    "CPU not recognised: U8S8 QDQ per-channel is ORT's portable default for CPU; "
    "the guardrail's latency check decides whether it is actually fast here.",
)


def recommend_ort_int8(cpu: CpuInfo | None = None) -> OrtInt8Settings:
    """The ORT static-int8 settings that are fast on ``cpu`` (default: this machine)."""
    cpu = cpu or detect_cpu()
    return _RECOMMENDATIONS[cpu.isa]


@dataclass(frozen=True)
class SpeedVerdict:
    """Outcome of comparing a quantized artifact's latency with its fp32 sibling."""

    slower: bool
    ratio: float  # quantized median / fp32 median; > 1 means slower
    quant_ms: float
    fp32_ms: float
    margin: float

    @property
    def message(self) -> str:
        if self.slower:
            return (
                f"quantized artifact is {self.ratio:.2f}x the latency of fp32 "
                f"({self.quant_ms:.2f} ms vs {self.fp32_ms:.2f} ms p50, margin {self.margin:.0%})"
            )
        return f"quantized p50 {self.quant_ms:.2f} ms vs fp32 {self.fp32_ms:.2f} ms ({self.ratio:.2f}x)"


def _median(sample: float | Sequence[float], what: str) -> float:
    values = [float(sample)] if isinstance(sample, (int, float)) else [float(v) for v in sample]
    if not values or any(not v > 0 or v != v or v == float("inf") for v in values):
        raise ValueError(f"{what} latency must be one or more positive finite milliseconds, got {sample!r}")
    return statistics.median(values)


def compare_latency(
    quant_ms: float | Sequence[float], fp32_ms: float | Sequence[float], margin: float = SLOWDOWN_MARGIN
) -> SpeedVerdict:
    """Is the quantized artifact slower than fp32 beyond ``margin``? Compares medians.

    Pass raw per-call timings (or a p50) measured in the same process, ideally
    interleaved. ``slower`` is True when ``median(quant) > median(fp32) * (1 + margin)``.

    Raises:
        ValueError: a sample is empty, non-positive or non-finite, or margin < 0.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    q = _median(quant_ms, "quantized")
    f = _median(fp32_ms, "fp32")
    return SpeedVerdict(slower=q > f * (1.0 + margin), ratio=q / f, quant_ms=q, fp32_ms=f, margin=margin)


recommended_ort_int8 = recommend_ort_int8
