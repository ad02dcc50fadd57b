"""Tasks: one module per task family; ``build_task`` picks the class from ``task.kind``.

| kind               | module            | model head                          |
|--------------------|-------------------|-------------------------------------|
| classification     | classification.py | sequence classification/regression |
| causal_lm          | causal_lm.py      | causal LM (perplexity)              |
| question_answering | qa.py             | extractive QA (SQuAD v1.1 / v2.0)   |
| summarization      | summarization.py  | seq2seq generation (ROUGE)          |
| instruction        | llm_adapters.py   | causal LM generation (LLM-Adapters) |
"""

import importlib

from ..errors import UserError
from .base import Task

TASKS = {
    "classification": "classification:ClassificationTask",
    "causal_lm": "causal_lm:CausalLMTask",
    "question_answering": "qa:QATask",
    "summarization": "summarization:SummarizationTask",
    "instruction": "llm_adapters:InstructionTask",
}


def task_class(kind: str) -> type[Task]:
    if kind not in TASKS:
        raise UserError(f"Unknown task.kind {kind!r}; known kinds: {sorted(TASKS)}")
    module, cls = TASKS[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build_task(cfg) -> Task:
    return task_class(cfg.kind)(cfg)


__all__ = ["TASKS", "Task", "build_task", "task_class"]
