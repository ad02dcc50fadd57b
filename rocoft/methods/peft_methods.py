"""Baselines from the ``peft`` library (not re-implemented): LoRA, AdaLoRA, IA3, LoHa, LoKr, VeRA,
prefix tuning, prompt tuning, and LoRA-FA (LoRA + peft's ``create_lorafa_optimizer``).

A method config names the peft config class (``peft_type``), the field the suite's ``rank`` maps to
(``rank_field``), where the targets come from (``targets: model`` = the model config's
``target_modules``, the same layers RoCoFT adapts; ``targets: peft`` = peft's per-architecture
default) and any other peft keyword arguments (``peft``).
"""

from __future__ import annotations

from pathlib import Path

import peft
from peft import PeftModel, TaskType, get_peft_model

from ..errors import UserError
from .base import Method, plain

TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM,
              "seq2seq": TaskType.SEQ_2_SEQ_LM, "question_answering": TaskType.QUESTION_ANS}
CONFIG_CLASSES = {"LORA": peft.LoraConfig, "ADALORA": peft.AdaLoraConfig, "IA3": peft.IA3Config,
                  "LOHA": peft.LoHaConfig, "LOKR": peft.LoKrConfig, "VERA": peft.VeraConfig,
                  "PREFIX_TUNING": peft.PrefixTuningConfig, "PROMPT_TUNING": peft.PromptTuningConfig}
PROMPT_LEARNING = ("PREFIX_TUNING", "PROMPT_TUNING")


class PeftMethod(Method):
    def peft_config(self, total_steps: int | None = None):
        kind = self.cfg.peft_type
        if kind not in CONFIG_CLASSES:
            raise UserError(f"method={self.name}: unknown peft_type {kind!r}; known: {sorted(CONFIG_CLASSES)}")
        kwargs = dict(plain(self.cfg.get("peft")) or {})
        if self.cfg.get("rank_field"):
            kwargs[self.cfg.rank_field] = int(self.cfg.rank)
        if kind not in PROMPT_LEARNING:
            if self.cfg.get("targets", "model") == "model":
                kwargs["target_modules"] = list(plain(self.model_cfg.target_modules))
            if kind == "IA3" and self.cfg.get("targets") == "model":
                raise UserError(f"method={self.name}: IA3 needs feed-forward modules: use targets: peft")
        if kind == "ADALORA":
            if not total_steps:
                raise UserError(f"method={self.name}: AdaLoRA needs the number of training steps")
            kwargs["total_step"] = total_steps
            kwargs["init_r"] = max(int(kwargs.get("init_r", 0)), int(kwargs.get("target_r", 1)))
            kwargs["tfinal"] = min(int(kwargs.get("tfinal", 0)), max(total_steps - int(kwargs.get("tinit", 0)) - 1, 0))
        if self.heads:
            kwargs["modules_to_save"] = list(self.heads)
        try:
            return CONFIG_CLASSES[kind](task_type=TASK_TYPES[self.kind], **kwargs)
        except (TypeError, ValueError) as e:
            raise UserError(f"method={self.name}: invalid peft settings {kwargs}: {e}") from None

    def apply(self, model, *, total_steps=None, **_):
        try:
            model = get_peft_model(model, self.peft_config(total_steps))
            if self.cfg.get("optimizer") == "lorafa":  # LoRA-FA trains B only: A stays at its random init
                for n, p in model.named_parameters():
                    if ".lora_A." in n:
                        p.requires_grad_(False)
            return model
        except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError) as e:
            raise UserError(f"method={self.name} does not work with {self.kind} model {self.model_cfg.name} "
                            f"(family {self.model_cfg.family}): {type(e).__name__}: {e}") from None

    def optimizer(self, model, train_cfg):
        if self.cfg.get("optimizer") != "lorafa":
            return None
        from peft.optimizers import create_lorafa_optimizer

        return create_lorafa_optimizer(model, r=int(self.cfg.rank), lora_alpha=int(self.cfg.peft.lora_alpha),
                                       lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    def after_step(self, model, step):
        if self.cfg.peft_type == "ADALORA":
            model.base_model.update_and_allocate(step)

    _ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # AdaLoRA's importance averages

    def extra_state(self, model):
        if self.cfg.peft_type != "ADALORA":
            return None
        allocator = model.base_model.rankallocator
        return {k: dict(getattr(allocator, k)) for k in self._ALLOCATOR_STATE}

    def load_extra_state(self, model, state):
        if self.cfg.peft_type == "ADALORA" and state:
            allocator = model.base_model.rankallocator
            for k in self._ALLOCATOR_STATE:
                setattr(allocator, k, dict(state.get(k, {})))

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base, directory):
        return PeftModel.from_pretrained(base, directory)

    def merged(self, model):
        if self.cfg.peft_type in PROMPT_LEARNING:
            return None  # virtual tokens cannot be folded into the weights
        return model.merge_and_unload()
