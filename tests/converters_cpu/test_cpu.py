"""converters._cpu: CPU flag parsing, the per-ISA int8 registry, and the slower-than-fp32 rule."""

from __future__ import annotations

import dataclasses

import pytest

from converters import _cpu
from converters._cpu import (
    SLOWDOWN_MARGIN,
    CpuInfo,
    compare_latency,
    detect_cpu,
    parse_cpuinfo,
    recommend_ort_int8,
)

# First processor blocks as Linux prints them (trimmed to the fields we read, flags verbatim).
ZEN4_VNNI = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq

processor\t: 1
flags\t\t: fpu
"""
SKYLAKE_NO_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c rdrand avx2 bmi1 bmi2
"""
ALDERLAKE_AVX_VNNI = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: fpu sse sse2 avx avx2 fma avx_vnni sha_ni
"""
SAPPHIRE_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON2_DOTPROD = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""
GRAVITON3_I8MM = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16 dgh rng
CPU part\t: 0xd40
"""
CORTEX_A53_NO_DOTPROD = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU part\t: 0xd03
"""


@pytest.mark.parametrize(
    ("text", "machine", "isa", "vnni"),
    [
        (ZEN4_VNNI, "x86_64", "x86-avx512-vnni", True),
        (SKYLAKE_NO_VNNI, "x86_64", "x86-avx2", False),
        (ALDERLAKE_AVX_VNNI, "x86_64", "x86-avx-vnni", True),
        (SAPPHIRE_AMX, "x86_64", "x86-amx", True),
        (GRAVITON2_DOTPROD, "aarch64", "arm64-dotprod", False),
        (GRAVITON3_I8MM, "aarch64", "arm64-i8mm", False),
        (CORTEX_A53_NO_DOTPROD, "aarch64", "arm64-baseline", False),
    ],
)
def test_cpuinfo_flags_map_to_the_right_isa_class(text: str, machine: str, isa: str, vnni: bool) -> None:
    cpu = parse_cpuinfo(text, machine=machine)
    assert cpu.isa == isa
    assert cpu.vnni is vnni


def test_only_the_first_processor_block_is_read() -> None:
    # the second block of ZEN4_VNNI says only "fpu"; it must not erase the first
    cpu = parse_cpuinfo(ZEN4_VNNI, machine="x86_64")
    assert cpu.avx512_vnni and cpu.avx2
    assert cpu.model_name == "AMD EPYC 9R14 96-Core Processor"


def test_arm_features_line_is_read_as_arm_even_if_machine_is_unknown() -> None:
    cpu = parse_cpuinfo(GRAVITON2_DOTPROD, machine="")
    assert cpu.arch == "aarch64" and cpu.asimddp and not cpu.i8mm


def test_arm_flags_never_leak_into_x86_classes() -> None:
    assert parse_cpuinfo(SKYLAKE_NO_VNNI, machine="x86_64").asimddp is False


@pytest.mark.parametrize(
    ("text", "machine", "activation", "reduce_range", "measured"),
    [
        (ZEN4_VNNI, "x86_64", "uint8", False, True),
        (ALDERLAKE_AVX_VNNI, "x86_64", "uint8", False, True),
        (SKYLAKE_NO_VNNI, "x86_64", "uint8", True, False),
        (GRAVITON2_DOTPROD, "aarch64", "int8", False, False),
        (CORTEX_A53_NO_DOTPROD, "aarch64", "int8", False, False),
    ],
)
def test_recommendation_per_isa(text: str, machine: str, activation: str, reduce_range: bool, measured: bool) -> None:
    rec = recommend_ort_int8(parse_cpuinfo(text, machine=machine))
    assert rec.activation_type == activation
    assert rec.weight_type == "int8"
    assert rec.quant_format == "QDQ"
    assert rec.reduce_range is reduce_range
    assert rec.measured is measured
    assert rec.why  # the reasoning is data, never empty


def test_vnni_recommendation_cites_the_measurement() -> None:
    rec = recommend_ort_int8(parse_cpuinfo(ZEN4_VNNI, machine="x86_64"))
    assert "explore_int8_variants" in rec.why and "QOperator S8S8" in rec.why


def test_every_isa_class_has_a_recommendation() -> None:
    classes = {
        CpuInfo("x86_64", amx_int8=True).isa,
        CpuInfo("x86_64", avx512_vnni=True).isa,
        CpuInfo("x86_64", avx_vnni=True).isa,
        CpuInfo("x86_64", avx2=True).isa,
        CpuInfo("x86_64").isa,
        CpuInfo("aarch64", i8mm=True).isa,
        CpuInfo("aarch64", asimddp=True).isa,
        CpuInfo("aarch64").isa,
        CpuInfo("riscv64").isa,
    }
    assert classes == set(_cpu._RECOMMENDATIONS)
    for isa, rec in _cpu._RECOMMENDATIONS.items():
        assert rec.isa == isa


def test_settings_are_frozen_and_the_pipeline_alias_is_the_same_function() -> None:
    rec = recommend_ort_int8(CpuInfo("x86_64", avx512_vnni=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.activation_type = "int8"  # type: ignore[misc]
    assert _cpu.recommended_ort_int8 is recommend_ort_int8


def test_detect_cpu_on_this_machine_and_on_a_missing_file(tmp_path) -> None:
    cpu = detect_cpu()
    assert cpu.isa in _cpu._RECOMMENDATIONS
    missing = detect_cpu(str(tmp_path / "nope"))
    assert missing.avx2 is False and missing.asimddp is False


@pytest.mark.parametrize(
    ("quant", "fp32", "slower"),
    [
        ([20.0, 21.0, 19.0], [10.0, 10.5, 9.5], True),  # 2x slower
        ([11.4], [10.0], False),  # +14 %: inside the 15 % noise margin
        ([11.6], [10.0], True),  # +16 %: outside it
        ([5.0, 5.2, 4.9], [10.0, 10.1, 9.9], False),  # faster
        ([10.0, 10.0, 100.0], [10.0, 10.0, 10.0], False),  # one outlier does not move the median
    ],
)
def test_slower_than_fp32_rule_uses_medians_and_the_margin(quant, fp32, slower: bool) -> None:
    verdict = compare_latency(quant, fp32)
    assert verdict.slower is slower
    assert verdict.margin == SLOWDOWN_MARGIN
    assert ("slower" in verdict.message or "latency of fp32" in verdict.message) is slower


def test_margin_zero_flags_any_slowdown() -> None:
    assert compare_latency(10.1, 10.0, margin=0.0).slower
    assert compare_latency(10.1, 10.0).ratio == pytest.approx(1.01)


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [float("nan")], [float("inf")]])
def test_bad_latency_samples_are_rejected(bad) -> None:
    with pytest.raises(ValueError, match="latency"):
        compare_latency(bad, [10.0])


def test_negative_margin_is_rejected() -> None:
    with pytest.raises(ValueError, match="margin"):
        compare_latency(1.0, 1.0, margin=-0.1)
