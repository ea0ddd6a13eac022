"""transferlab: the best classifier a pretrained torchvision network can give an image folder."""

from transferlab.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"
