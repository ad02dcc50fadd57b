"""Baselines from the ``peft`` library (not re-implemented): LoRA, AdaLoRA, IA3, LoHa, LoKr, VeRA,
prefix tuning, prompt tuning, and LoRA-FA (LoRA + peft's ``create_lorafa_optimizer``).

A method config names the peft method (``peft_type``, a key of peft's own
``PEFT_TYPE_TO_CONFIG_MAPPING``), the config field the suite's ``rank`` maps to (``rank_field``),
where the targets come from (``targets: model`` = the model config's ``target_modules``, the same
layers RoCoFT adapts; ``targets: peft`` = peft's per-architecture default) and any other keyword
arguments of that peft config class (``peft``).
"""

from __future__ import annotations

from pathlib import Path

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftModel, PromptLearningConfig, TaskType, get_peft_model

from ..errors import UserError
from .base import Method

# peft has no masked-LM task type: its plain PeftModel (task_type None) passes every input to the model
TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "masked_lm": None,
              "seq2seq": TaskType.SEQ_2_SEQ_LM, "question_answering": TaskType.QUESTION_ANS}


class PeftMethod(Method):
    """Any peft method whose config class takes the suite's targets and heads (``modules_to_save``)."""

    def __init__(self, name: str, *, peft_type: str, rank: int | None = None, rank_field: str | None = None,
                 targets: str = "model", peft: dict | None = None, **context):
        super().__init__(name, rank=rank, **context)
        if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
            raise UserError(f"method={name}: unknown peft_type {peft_type!r}; peft {_peft_version()} knows: "
                            f"{', '.join(sorted(str(k.value) for k in PEFT_TYPE_TO_CONFIG_MAPPING))}.")
        if targets not in ("model", "peft"):
            raise UserError(f"method={name}: targets must be 'model' (model.target_modules) or 'peft' (peft's "
                            f"per-architecture default), got {targets!r}.")
        self.peft_type, self.config_class = peft_type, PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
        self.prompt_learning = issubclass(self.config_class, PromptLearningConfig)  # virtual tokens, no targets
        self.rank_field, self.targets, self.peft_kwargs = rank_field, targets, dict(peft or {})

    def config_kwargs(self, total_steps: int | None) -> dict:
        """The peft config's keyword arguments for this run (subclasses add method-specific ones)."""
        kwargs = dict(self.peft_kwargs)
        if self.rank_field:
            kwargs[self.rank_field] = int(self.rank)
        if not self.prompt_learning and self.targets == "model":
            kwargs["target_modules"] = list(self.model_cfg.target_modules)
        if self.heads:
            kwargs["modules_to_save"] = list(self.heads)
        return kwargs

    def peft_config(self, total_steps: int | None = None):
        kwargs = self.config_kwargs(total_steps)
        try:
            return self.config_class(task_type=TASK_TYPES[self.kind], **kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"method={self.name}: invalid peft settings {kwargs}: {e}") from None

    def apply(self, model, *, total_steps=None, **_):
        try:
            return get_peft_model(model, self.peft_config(total_steps))
        except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError) as e:
            raise UserError(f"method={self.name} does not work with {self.kind} model {self.model_cfg.name} "
                            f"(family {self.model_cfg.family}): {type(e).__name__}: {e}") from None

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base, directory):
        return PeftModel.from_pretrained(base, directory)

    def merged(self, model):
        if self.prompt_learning:
            return None  # virtual tokens cannot be folded into the weights
        return model.merge_and_unload()


class IA3(PeftMethod):
    """(IA)^3: learned scalings of keys, values and the feed-forward output, so it needs peft's targets."""

    def __init__(self, name: str, *, targets: str = "peft", **kwargs):
        if targets == "model":
            raise UserError(f"method={name}: IA3 needs feed-forward modules: use targets: peft")
        super().__init__(name, targets=targets, **kwargs)


class AdaLoRA(PeftMethod):
    """AdaLoRA: the rank budget schedule spans the run's optimizer steps; the allocator's importance
    averages are checkpointed, so a resumed run equals an uninterrupted one."""

    _ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # AdaLoRA's importance averages

    def config_kwargs(self, total_steps):
        if not total_steps:
            raise UserError(f"method={self.name}: AdaLoRA needs the number of training steps")
        kwargs = super().config_kwargs(total_steps)
        kwargs["total_step"] = total_steps
        kwargs["init_r"] = max(int(kwargs["init_r"]), int(kwargs["target_r"]))  # the rank starts at least at r
        kwargs["tfinal"] = min(int(kwargs["tfinal"]), max(total_steps - int(kwargs["tinit"]) - 1, 0))
        return kwargs

    def after_step(self, model, step):
        model.base_model.update_and_allocate(step)

    def extra_state(self, model):
        allocator = model.base_model.rankallocator
        return {k: dict(getattr(allocator, k)) for k in self._ALLOCATOR_STATE}

    def load_extra_state(self, model, state):
        allocator = model.base_model.rankallocator
        for k in self._ALLOCATOR_STATE:
            setattr(allocator, k, dict(state[k]))


class LoRAFA(PeftMethod):
    """LoRA-FA: LoRA with A frozen at its random init; B trains with peft's ``create_lorafa_optimizer``."""

    def apply(self, model, **kwargs):
        model = super().apply(model, **kwargs)
        for n, p in model.named_parameters():
            if ".lora_A." in n:
                p.requires_grad_(False)
        return model

    def optimizer(self, model, train_cfg):
        from peft.optimizers import create_lorafa_optimizer

        return create_lorafa_optimizer(model, r=int(self.rank), lora_alpha=int(self.peft_kwargs["lora_alpha"]),
                                       lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def _peft_version() -> str:
    import peft

    return peft.__version__
