"""Tasks: one module per task family; ``build_task`` picks the class from ``task.kind``."""

from ..errors import UserError
from .base import Task
from .causal_lm import CausalLMTask
from .classification import ClassificationTask

TASKS = {"classification": ClassificationTask, "causal_lm": CausalLMTask}


def build_task(cfg) -> Task:
    if cfg.kind not in TASKS:
        raise UserError(f"Unknown task.kind {cfg.kind!r}; known kinds: {sorted(TASKS)}")
    return TASKS[cfg.kind](cfg)


__all__ = ["TASKS", "Task", "build_task"]
