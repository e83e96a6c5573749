"""edgepack converters: export a trained model to ONNX and TFLite, quantize it,
check every artifact against the ORIGINAL model, and write a signed bundle
with a report. The one entry point is ``build(model, recipe)``; see docs/build.md.

Heavy frameworks (torch, tensorflow, litert-torch) are imported only when a
model of their kind is built.
"""

from ._errors import (
    CalibrationRequiredError,
    DataMismatchError,
    ModelLoadError,
    NonFiniteDataError,
    OutputDirError,
    ParityFailedError,
    QuantizedSlowerError,
    UnknownKeyError,
    UnsupportedError,
    UnsupportedOpError,
)
from ._pipeline import BuildResult, RandomInputsWarning, build
from ._recipe import (
    DEFAULT_TOLERANCES,
    PRECISIONS,
    TARGETS,
    Recipe,
    Tolerance,
    load_recipe,
    recipe_from_dict,
    write_init,
)
from ._report import summary_text

__all__ = [
    "DEFAULT_TOLERANCES",
    "PRECISIONS",
    "TARGETS",
    "BuildResult",
    "CalibrationRequiredError",
    "DataMismatchError",
    "ModelLoadError",
    "NonFiniteDataError",
    "OutputDirError",
    "ParityFailedError",
    "QuantizedSlowerError",
    "RandomInputsWarning",
    "Recipe",
    "Tolerance",
    "UnknownKeyError",
    "UnsupportedError",
    "UnsupportedOpError",
    "build",
    "load_recipe",
    "recipe_from_dict",
    "summary_text",
    "write_init",
]
