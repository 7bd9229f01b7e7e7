"""Import the PyPI ``segment-anything`` package's model code without its top-level ``__init__``.

``segment_anything/__init__.py`` imports ``predictor`` and ``automatic_mask_generator``, which import torchvision; there
is no CPU build of torchvision for our torch (the matching wheel is CUDA-linked and fails to import), so
``import segment_anything`` fails. GSVA needs only ``segment_anything.modeling`` (image encoder, prompt encoder, mask
decoder), which has no torchvision dependency. When ``segment_anything`` imports normally we use it as is; otherwise we
register a bare package module whose ``__path__`` is the installed folder, so ``segment_anything.modeling`` loads from
the unmodified files. No code is copied and no fake torchvision is created (that would make transformers believe
torchvision works).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["sam_modeling"]


def sam_modeling() -> types.ModuleType:
    """Return the ``segment_anything.modeling`` module. Raises ImportError if the package is not installed."""
    try:
        return importlib.import_module("segment_anything.modeling")
    except ImportError as exc:
        if "torchvision" not in str(exc):
            raise
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'segment-anything' package is not installed (pip install segment-anything)")
    for name in [n for n in sys.modules if n == "segment_anything" or n.startswith("segment_anything.")]:
        del sys.modules[name]  # drop the half-initialised package left by the failed import
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "segment_anything"
    sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")
