"""Fine-tuning methods, one module per family: ``native`` (full FT, BitFit, LN tuning), ``rocoft_method``
(RoCoFT rows / columns / random entries), ``peft_methods`` (LoRA and the other peft baselines), ``adapters``
(Adapter^S, MAM adapter), ``propetl`` (PROPETL adapter / prefix / LoRA), and the suite's own baselines on
wrapped linear layers (``wrapping``): ``lora_variants`` (MoSLoRA, LoRA-XS) and ``sparse`` (SFT, Diff pruning).

Each ``conf/method/<name>.yaml`` names its class (``_target_``) and that class's keyword arguments, as
Hydra's ``instantiate`` passes them; the keys the main config reads (``tag``, ``lr``, ``label``) are not the
method's. ``build_method(cfg.method, cfg.model, task.kind, seed)`` returns the :class:`Method`, whose
``apply`` makes a model train what the method says (the task head always trains fully).

To add a method: a :class:`Method` subclass (``__init__`` with typed keyword arguments, ``apply``, and the
hooks it needs) and one YAML with ``_target_`` pointing at it.
"""

from __future__ import annotations

import re

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..errors import UserError
from .base import Method

MAIN_CONFIG_KEYS = ("tag", "lr", "label")  # read by conf/config.yaml (output_dir, train.lr) and reporting


def method_arguments(method_cfg) -> dict:
    """The method config as the class's keyword arguments (``_target_`` kept, main-config keys dropped)."""
    plain = OmegaConf.to_container(method_cfg, resolve=True) if OmegaConf.is_config(method_cfg) else dict(method_cfg)
    return {k: v for k, v in plain.items() if k not in MAIN_CONFIG_KEYS}


def method_class(method_cfg) -> type | None:
    """The class ``method_cfg._target_`` names, or None where it names none (:func:`build_method` says why)."""
    from hydra.utils import get_class

    try:
        cls = get_class(str(method_cfg.get("_target_")))
    except Exception:  # noqa: BLE001 - a missing or bad _target_: build_method's clear error comes later
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Method) else None


def build_method(method_cfg, model_cfg, kind: str, seed: int) -> Method:
    """Instantiate ``method_cfg._target_`` with the config's keys, the model config, the task kind and the seed."""
    args = method_arguments(method_cfg)
    if "_target_" not in args:
        raise UserError(f"The method config {args.get('name')!r} has no _target_: name its class, e.g. "
                        f"_target_: rocoft.methods.rocoft_method.RoCoFTMethod (see conf/method/rocoft_row.yaml).")
    try:
        make = instantiate(args, _partial_=True, _convert_="all")
    except InstantiationException as e:
        raise UserError(f"method={args.get('name')}: cannot load _target_ {args['_target_']!r} ({e}); name a "
                        f"class of rocoft.methods (e.g. rocoft.methods.peft_methods.PeftMethod).") from None
    if not (isinstance(make.func, type) and issubclass(make.func, Method)):
        raise UserError(f"method={args.get('name')}: _target_ {args['_target_']!r} is not a rocoft.methods.Method.")
    try:
        return make(model_cfg=model_cfg, kind=kind, seed=seed)
    except TypeError as e:  # a key the class does not take, or a missing one
        if not re.search(r"__init__\(\) (got an unexpected keyword|missing \d+ required)", str(e)):
            raise
        raise UserError(f"method={args.get('name')}: the config does not fit {make.func.__name__} ({e}); its "
                        f"keys must be that class's keyword arguments, or one of {MAIN_CONFIG_KEYS}.") from None


__all__ = ["MAIN_CONFIG_KEYS", "Method", "build_method", "method_arguments", "method_class"]
