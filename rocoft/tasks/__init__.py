"""Tasks: one module per task family; a task YAML names its class in ``_target_``.

| kind               | module            | model head                          |
|--------------------|-------------------|-------------------------------------|
| classification     | classification.py | sequence classification/regression |
| causal_lm          | causal_lm.py      | causal LM (perplexity)              |
| question_answering | qa.py             | extractive QA (SQuAD v1.1 / v2.0)   |
| summarization      | summarization.py  | seq2seq generation (ROUGE)          |
| instruction        | llm_adapters.py   | causal LM generation (LLM-Adapters) |

Shared: ``base.py`` (the Task interface, ``Encoded``), ``data.py`` (the one loader and its readers),
``modes.py`` (generation and log-likelihood evaluation). Scoring functions live in ``rocoft.metrics``.
Add a task: a YAML in conf/task/ with ``_target_`` and the class's keyword arguments (and a class, if no
existing one fits).
"""

import inspect

from hydra.utils import get_class
from omegaconf import OmegaConf

from ..errors import UserError
from .base import Encoded, Task

TASKS = {
    "classification": "rocoft.tasks.classification.ClassificationTask",
    "causal_lm": "rocoft.tasks.causal_lm.CausalLMTask",
    "question_answering": "rocoft.tasks.qa.QATask",
    "summarization": "rocoft.tasks.summarization.SummarizationTask",
    "instruction": "rocoft.tasks.llm_adapters.InstructionTask",
}
# Keys of a task YAML that are protocol settings read by the run's config (conf/config.yaml: hparams,
# lr, seq_len; the RoCoFT method configs: rocoft) and by reports (kind: the task family), not by the task.
PROTOCOL_KEYS = ("kind", "hparams", "lr", "rocoft", "seq_len")


def task_class(kind: str) -> type[Task]:
    if kind not in TASKS:
        raise UserError(f"Unknown task.kind {kind!r}; known kinds: {sorted(TASKS)}")
    return get_class(TASKS[kind])


def build_task(cfg) -> Task:
    """The task of a config (``cfg.task``): the class in ``_target_`` (else the one of ``kind``) called with the
    remaining keys as keyword arguments, the protocol keys left out (``PROTOCOL_KEYS``)."""
    values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    target = values.pop("_target_", None)
    cls = get_class(target) if target else task_class(values.get("kind"))
    kwargs = {k: v for k, v in values.items() if k not in PROTOCOL_KEYS}
    accepted = {name for c in cls.__mro__ if issubclass(c, Task) and "__init__" in c.__dict__
                for name in inspect.signature(c.__init__).parameters} - {"self", "common"}
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise UserError(f"Task {values.get('name')!r}: {cls.__name__} has no setting {unknown}; its settings are "
                        f"{sorted(accepted)}. Remove the key(s) or fix "
                        f"their spelling.")
    return cls(**kwargs)


__all__ = ["PROTOCOL_KEYS", "TASKS", "Encoded", "Task", "build_task", "task_class"]
