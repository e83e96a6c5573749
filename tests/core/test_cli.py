"""The CLI: one-line errors with documented exit codes, --help with examples,
--json for scripts, and a full key -> sign -> verify -> inspect round trip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgepack as ep
from edgepack._errors import EXIT_CODES
from edgepack.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _documented_codes() -> set[int]:
    text = (ROOT / "docs" / "cli.md").read_text()
    return {int(m) for m in re.findall(r"^\| (\d+) \|", text, flags=re.M)}


def _all_error_classes() -> list[type[ep.EdgepackError]]:
    import importlib
    import pkgutil

    # Import every module first, so error classes defined anywhere are seen.
    for pkg in ("edgepack", "converters", "runtime", "fleet_server"):
        root = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(root.__path__, f"{pkg}."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:
                if e.name != "flwr":  # the Flower adapter is an optional extra
                    raise
    out, stack = [], [ep.EdgepackError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def test_every_exit_code_is_documented() -> None:
    documented = _documented_codes()
    assert set(EXIT_CODES) <= documented
    assert {cls.exit_code for cls in _all_error_classes()} <= documented


def test_every_error_class_says_what_it_means() -> None:
    for cls in _all_error_classes():
        assert cls.__doc__ and cls.__name__.endswith("Error"), cls


def _subcommand_parsers() -> list[tuple[str, object]]:
    import argparse

    found = []

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sp in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), sp))
                    walk(sp, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


def test_every_command_help_has_an_example() -> None:
    parsers = _subcommand_parsers()
    assert {"keys new", "keys trust", "sign", "verify", "inspect"} <= {n for n, _ in parsers}
    for name, p in parsers:
        assert "Example" in p.format_help(), f"'edgepack {name} --help' has no example"


def test_key_sign_verify_inspect_round_trip(tmp_path, edgepack_cli, make_bundle) -> None:
    code, out, _ = edgepack_cli("--json", "keys", "new", "--out", tmp_path / "k", "--name", "rel")
    assert code == 0
    keyid = json.loads(out)["keyid"]
    code, _, _ = edgepack_cli("keys", "trust", tmp_path / "k" / "rel.pub.json", "--out", tmp_path / "trust.json")
    assert code == 0
    bundle = make_bundle(keys=[])
    code, _, err = edgepack_cli("verify", bundle, "--trust", tmp_path / "trust.json")
    assert code == ep.UnsignedError.exit_code and "no signatures" in err
    assert edgepack_cli("sign", bundle, "--key", tmp_path / "k" / "rel.key")[0] == 0
    code, out, _ = edgepack_cli("verify", bundle, "--trust", tmp_path / "trust.json", "--json")
    assert code == 0 and json.loads(out)["signed_by"] == [keyid]
    code, out, _ = edgepack_cli("inspect", bundle)
    assert code == 0 and "tiny.fp32.onnx" in out and "PASS" in out
    code, out, _ = edgepack_cli("inspect", bundle, "--json")
    assert json.loads(out)["manifest"]["artifacts"][0]["format"] == "onnx"


def test_failure_is_one_line_with_where_and_fix_and_no_traceback(tmp_path, edgepack_cli, make_bundle, trust) -> None:
    trust.save(tmp_path / "trust.json")
    missing = tmp_path / "nope.edgepack"
    code, out, err = edgepack_cli("verify", missing, "--trust", tmp_path / "trust.json")
    assert code == ep.BundleError.exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in err


def test_json_failure_prints_a_json_error(tmp_path, edgepack_cli) -> None:
    code, out, _ = edgepack_cli("--json", "verify", tmp_path / "x.edgepack", "--trust", tmp_path / "t.json")
    doc = json.loads(out)
    assert code == doc["exit_code"] == ep.TrustError.exit_code and doc["error"] == "TrustError"


def test_usage_error_exits_2(edgepack_cli) -> None:
    code, _, err = edgepack_cli("verify")
    assert code == 2 and "required" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_a_traceback_in_a_real_process(tmp_path) -> None:
    cmd = [sys.executable, "-m", "edgepack", "inspect", str(tmp_path / "missing.edgepack")]
    quiet = subprocess.run(cmd, capture_output=True, text=True)
    loud = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert quiet.returncode == loud.returncode == ep.BundleError.exit_code
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr


def test_version_flag_prints_the_version(edgepack_cli) -> None:
    with pytest.raises(SystemExit) as e:
        edgepack_cli("--version")
    assert e.value.code == 0
