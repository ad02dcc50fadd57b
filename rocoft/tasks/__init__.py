"""Tasks: one module per task family; a task YAML names its class in ``_target_``.

| kind               | module            | model head                          |
|--------------------|-------------------|-------------------------------------|
| classification     | classification.py | sequence classification/regression |
| causal_lm          | causal_lm.py      | causal LM (perplexity)              |
| question_answering | qa.py             | extractive QA (SQuAD v1.1 / v2.0)   |
| summarization      | summarization.py  | seq2seq generation (ROUGE)          |
| instruction        | llm_adapters.py   | causal LM generation (LLM-Adapters) |
| prompt             | prompt.py         | masked / causal LM label words (LM-BFF few-shot) |

Shared: ``base.py`` (the Task interface, ``Encoded``), ``data.py`` (the one loader and its readers),
``modes.py`` (generation and log-likelihood evaluation). Scoring functions live in ``rocoft.metrics``.
Add a task: a YAML in conf/task/ with ``_target_`` and the class's keyword arguments (and a class, if no
existing one fits).
"""

import inspect

from hydra.utils import get_class
from omegaconf import OmegaConf

from ..errors import UserError
from .base import Encoded, Splits, Task

# The task families a task YAML's ``kind`` names (the table above): reports group runs by it. The class is
# the YAML's ``_target_``, the one way to find it.
KINDS = ("classification", "causal_lm", "question_answering", "summarization", "instruction", "prompt")
# Keys of a task YAML that are protocol settings read by the run's config (conf/config.yaml: hparams,
# lr, seq_len; the RoCoFT method configs: rocoft) and by reports (kind: the task family), not by the task.
PROTOCOL_KEYS = ("kind", "hparams", "lr", "rocoft", "seq_len")


def build_task(cfg, model_cfg=None) -> Task:
    """The task of a config (``cfg.task``): the class in ``_target_`` called with the remaining keys as
    keyword arguments, the protocol keys left out (``PROTOCOL_KEYS``); adapted to ``model_cfg`` (the run's
    model config, :meth:`Task.use_model`) when given."""
    values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    target = values.pop("_target_", None)
    if not target:
        raise UserError(f"Task config {values.get('name')!r} has no _target_: name the task class in it, e.g. "
                        f"_target_: rocoft.tasks.classification.ClassificationTask (the classes: rocoft/tasks/).")
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - hydra wraps import errors in several types
        raise UserError(f"Task config {values.get('name')!r}: _target_ {target!r} is not a class ({e}).") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"Task config {values.get('name')!r}: _target_ {target!r} is not a rocoft.tasks.Task.")
    kwargs = {k: v for k, v in values.items() if k not in PROTOCOL_KEYS}
    accepted = {name for c in cls.__mro__ if issubclass(c, Task) and "__init__" in c.__dict__
                for name in inspect.signature(c.__init__).parameters} - {"self", "common"}
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise UserError(f"Task {values.get('name')!r}: {cls.__name__} has no setting {unknown}; its settings are "
                        f"{sorted(accepted)}. Remove the key(s) or fix "
                        f"their spelling.")
    task = cls(**kwargs)
    if model_cfg is not None:
        task.use_model(model_cfg)
    return task


__all__ = ["KINDS", "PROTOCOL_KEYS", "Encoded", "Splits", "Task", "build_task"]
