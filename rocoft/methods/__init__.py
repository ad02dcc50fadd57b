"""Fine-tuning methods, one module per family: ``native`` (full FT, BitFit, LN tuning), ``rocoft_method``
(RoCoFT rows / columns / random entries) and ``peft_methods`` (LoRA and the other peft baselines).

``build_method(cfg.method, cfg.model, task.kind, seed)`` returns a :class:`Method` whose ``apply``
makes a model train what the method says (the task head always trains fully).
"""

from ..errors import UserError
from .base import Method
from .native import BitFit, FullFT, LNTuning
from .peft_methods import PeftMethod
from .rocoft_method import RoCoFTMethod

METHODS = {"full": FullFT, "bitfit": BitFit, "ln_tuning": LNTuning, "rocoft": RoCoFTMethod, "peft": PeftMethod}


def build_method(method_cfg, model_cfg, kind: str, seed: int) -> Method:
    if method_cfg.kind not in METHODS:
        raise UserError(f"Unknown method.kind {method_cfg.kind!r} in method config {method_cfg.name!r}; "
                        f"known kinds: {sorted(METHODS)}")
    return METHODS[method_cfg.kind](method_cfg, model_cfg, kind, seed)


__all__ = ["METHODS", "Method", "build_method"]
