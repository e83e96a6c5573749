"""``edgepack init`` and ``edgepack build``. ``converters`` (torch, tensorflow)
is imported inside the command only: the rest of the CLI stays light."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from . import add_command, emit


def register(sub: argparse._SubParsersAction) -> None:
    i = add_command(sub, "init", "write a commented edgepack.toml build recipe",
                    "edgepack init && edgepack build model.pt2 -r edgepack.toml")
    i.add_argument("path", nargs="?", type=Path, default=Path("edgepack.toml"))
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    i.set_defaults(func=_init)

    b = add_command(sub, "build", "export to ONNX/TFLite, quantize, check parity vs the original, write a bundle",
                    "edgepack build model.pt2 -r edgepack.toml --calibration calib.npz --eval eval.npz "
                    "--key keys/release.key")
    b.add_argument("model", help=".pt2, .keras, SavedModel dir, .onnx, or pkg.module:factory")
    b.add_argument("-r", "--recipe", type=Path, help="edgepack.toml (see 'edgepack init')")
    b.add_argument("-o", "--out", type=Path, help="output directory (default: [build] out, 'dist')")
    b.add_argument("--targets", help="comma list: onnx,tflite")
    b.add_argument("--precision", help="comma list: fp32,fp16,int8 (=int8-static),int8-dynamic")
    b.add_argument("--calibration", metavar="DATA", help=".npy/.npz (x, optional y) or an image directory")
    b.add_argument("--eval", metavar="DATA", dest="eval_data", help="held-out data for parity (and accuracy)")
    b.add_argument("--train", metavar="DATA", dest="train_data",
                   help="training data for compression sections / --search (default: the calibration data)")
    b.add_argument("--key", type=Path, help="release signing key; without one the bundle is unsigned")
    b.add_argument("--name", help="bundle name (overrides [model] name)")
    b.add_argument("--version", dest="model_version", type=int, help="bundle version (overrides [model] version)")
    b.add_argument("--strict", action="store_true", default=None,
                   help="fail when a quantized artifact is slower than its fp32 sibling")
    b.add_argument("--search", action="store_true", default=None,
                   help="measure the [search] candidates (sparsities, ratios, precisions) and build the smallest "
                        "or fastest within budget; torch models, needs --eval with labels")
    b.add_argument("--auto-fix", action="store_true", default=None,
                   help="keep the worst ONNX nodes in float until int8 parity passes")
    b.set_defaults(func=_build)


def _init(args: argparse.Namespace) -> int:
    from converters import write_init

    path = write_init(args.path, overwrite=args.force)
    emit(args, {"recipe": str(path)}, f"wrote {path}: edit it, then run 'edgepack build MODEL -r {path}'")
    return 0


def _print_failed(args: argparse.Namespace, e: Exception) -> None:
    import sys

    import converters

    report = getattr(e, "report", None)
    if report is not None and not getattr(args, "json", False):
        print(converters.summary_text(report, None, str(e.report_paths[1]), False),  # type: ignore[attr-defined]
              file=sys.stderr)


def _split(v: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in v.split(",") if x.strip()) if v else None


def _build(args: argparse.Namespace) -> int:
    import converters

    recipe = converters.load_recipe(args.recipe) if args.recipe else converters.Recipe()
    recipe = recipe.with_overrides(
        model={"name": args.name, "version": args.model_version},
        build={"targets": _split(args.targets), "precisions": _split(args.precision),
               "strict": args.strict, "auto_fix": args.auto_fix,
               "search": args.search},
    )
    with warnings.catch_warnings():
        # the report and summary carry these warnings; Python's own lines would just be noise
        warnings.simplefilter("ignore")
        try:
            result = converters.build(args.model, recipe, out=args.out, calibration=args.calibration,
                                      eval_data=args.eval_data, key=args.key,
                                      train_data=args.train_data)
        except converters.ParityFailedError as e:
            _print_failed(args, e)
            raise
        except converters.QuantizedSlowerError as e:
            _print_failed(args, e)
            raise
    text = converters.summary_text(result.report, str(result.bundle), str(result.report_html), result.signed)
    emit(args, {"passed": True, "bundle": str(result.bundle), "signed": result.signed,
                "report_json": str(result.report_json), "report_html": str(result.report_html),
                "artifacts": [{k: r[k] for k in ("name", "format", "precision", "size", "parity")}
                              for r in result.artifacts],
                "warnings": result.warnings}, text)
    return 0
