"""RoCoFT reproduction suite: the RoCoFT library (``rocoft.core``) plus models, tasks, methods
and the training loop used by ``train.py``."""

from .core import *  # noqa: F401,F403
from .core import __all__  # noqa: F401 - re-exported

__version__ = "0.1.0"
