"""transferlab: the best classifier a pretrained network (torchvision or timm) can give an image folder.

``transferlab.fit``, ``transferlab.load`` (see :mod:`transferlab.api`) are imported on first use, so that
``import transferlab`` stays light.
"""

import importlib
from typing import Any

from transferlab.errors import ConfigError

__all__ = ["ConfigError", "fit", "load"]
__version__ = "0.1.0"
_API = {"fit", "load", "FitResult", "Classifier"}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("transferlab.api"), name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
