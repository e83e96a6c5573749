"""The ``edgepack`` command line.

Each command group lives in its own module with a ``register(subparsers)``
function (STYLE rule 7: a registry, not an if-chain). Heavy packages
(converters, fleet_server) are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from .._errors import EdgepackError, UsageError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: modules that add subcommands, in the order --help lists them
COMMAND_MODULES = [
    "edgepack.cli._keys",
    "edgepack.cli._bundle",
    "edgepack.cli._build",
    "edgepack.cli._device",
    "edgepack.cli._fleet",
    "edgepack.cli._fl",
]

EPILOG = """\
Examples:
  edgepack keys new --out keys/ --name release
  edgepack keys trust keys/release.pub.json --out trust.json
  edgepack build model.onnx -o dist/ --key keys/release.key
  edgepack verify dist/model-1.edgepack --trust trust.json
  edgepack inspect dist/model-1.edgepack --json

Exit codes are listed in docs/cli.md. Add --debug to see a traceback.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgepack",
        description="Convert, check, sign and ship models to edge devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgepack {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on failure")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not written yet
        mod.register(sub)
    return parser


def add_command(sub: argparse._SubParsersAction, name: str, help: str, example: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with a runnable example."""
    p = sub.add_parser(
        name, help=help, description=description or help,
        epilog=f"Example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON on stdout")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show a traceback on failure")
    return p


def emit(args: argparse.Namespace, result: dict, text: str) -> None:
    """Print ``result`` as JSON under --json, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif text:
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    as_json = "--json" in argv
    try:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.parse_args([*argv, "--help"])
            return 0
        return int(args.func(args) or 0)
    except EdgepackError as e:
        if debug:
            traceback.print_exc()
        print(f"edgepack: error: {e.one_line()}", file=sys.stderr)
        if as_json:
            print(json.dumps(e.to_dict(), sort_keys=True))
        return e.exit_code
    except KeyboardInterrupt:
        print("edgepack: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: still one line, still a code
        if debug:
            traceback.print_exc()
        print(f"edgepack: internal error: {type(e).__name__}: {e}; rerun with --debug and report it",
              file=sys.stderr)
        return 70
