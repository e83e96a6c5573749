"""The repository layout and packaging promised by issue 2, item 1."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_layout() -> None:
    required = {"pyproject.toml", "edgepack", "converters", "runtime", "fleet_server", "tests", "benchmarks",
                "README.md"}
    allowed = required | {"Makefile", ".ci", "docs", "examples", "constraints.txt", ".gitignore", ".git"}
    present = {p.name for p in ROOT.iterdir() if not p.name.startswith((".venv", ".pytest", ".mypy", ".ruff",
                                                                         ".hypothesis", "demo-out"))}
    present -= {"build", "edgepack.egg-info", "instance"}
    assert required <= present
    assert present <= allowed, present - allowed


def test_one_distribution_with_split_extras() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "edgepack"
    assert project["scripts"]["edgepack"] == "edgepack.cli:main"

    def names(reqs: list[str]) -> set[str]:
        import re

        return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}

    base = names(project["dependencies"])
    assert base == {"numpy", "onnxruntime", "ai-edge-litert", "cryptography", "tuf"}
    extras = project["optional-dependencies"]
    assert {"torch", "onnx", "onnxscript", "onnxconverter-common", "tensorflow-cpu", "litert-torch",
            "neural-compressor", "torch-pruning"} <= names(extras["build"])
    assert "torch==2.13.0" in extras["build"]
    assert {"flask", "sqlalchemy", "gunicorn", "psycopg", "prometheus-client"} <= names(extras["server"])
    assert {"pytest", "hypothesis", "playwright", "ruff", "mypy"} <= names(extras["dev"])
    assert all(x in extras["all"][0] for x in ("build", "server", "dev"))
    assert set(meta["tool"]["setuptools"]["packages"]["find"]["include"]) == {
        "edgepack*", "converters*", "runtime*", "fleet_server*"}


def test_torch_is_pinned_for_every_install() -> None:
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
