"""What a fine-tuning method is to the training loop: apply it, optimise, save, load, count."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import count_parameters, name_matches
from ..errors import UserError

KINDS = ("classification", "causal_lm", "masked_lm", "seq2seq", "question_answering")  # model-head kinds, as in rocoft.models.HEAD_CLASSES


def plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class Method:
    """One fine-tuning method, built by :func:`rocoft.methods.build_method` from ``conf/method/<name>.yaml``.

    Subclasses take their settings as typed keyword arguments (the YAML's keys) and implement
    :meth:`apply`; the other hooks have defaults that suit most methods. ``model_cfg``, ``kind`` (the
    task's model-head kind) and ``seed`` come from the run. ``heads`` are the model's task-head patterns
    for this kind (``model.head_modules``): always trained fully.
    """

    #: task kinds this method supports (a clear error names the method and family otherwise)
    supported_kinds: tuple[str, ...] = KINDS
    #: training batches :meth:`apply` gets as ``calibration_batches`` (0: none)
    calibration_batches: int = 0
    #: why the method cannot run under an engine that shards or copies the weights (FSDP, DeepSpeed), or None
    #: where it can; such a run stops with this reason before training (:func:`rocoft.distributed.check_engine`).
    #: Only full fine-tuning can (FSDP2): the others' artifacts are saved from rank 0's trainable tensors.
    sharded_engines_refused: str | None = (
        "its artifact is saved from rank 0's trainable tensors, which under a sharded engine hold only that "
        "rank's shard; only method=full_ft is supported under FSDP")

    def __init__(self, name: str, *, model_cfg, kind: str, seed: int, rank: int | None = None):
        self.name, self.model_cfg, self.kind, self.seed = name, model_cfg, kind, seed
        self.rank = rank  # the capacity knob recorded in results (None where the method has none)
        if kind not in self.supported_kinds:
            raise UserError(f"method={self.name} does not support {kind} models ({model_cfg.name}, family "
                            f"{model_cfg.family}); it supports: {', '.join(self.supported_kinds)}.")
        heads = plain(model_cfg.head_modules)
        if kind not in heads:
            raise UserError(f"model={model_cfg.name} names no task head for {kind} models: add "
                            f"head_modules.{kind} (a list of module names, [] for none) to its config.")
        self.heads = list(heads[kind])

    def apply(self, model: nn.Module, *, calibration_batches=None, total_steps: int | None = None) -> nn.Module:
        raise NotImplementedError

    def optimizer(self, model: nn.Module, train_cfg):
        """A method-specific optimizer, or None for the suite's AdamW."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step, before gradients are cleared."""

    def extra_state(self, model: nn.Module) -> dict | None:
        """State outside the parameters and the optimizer that a resumed run needs (checkpointed)."""
        return None

    def load_extra_state(self, model: nn.Module, state: dict) -> None:
        """Put back what :meth:`extra_state` returned."""

    def train_heads(self, model: nn.Module) -> None:
        for n, m in model.named_modules():
            if self.heads and name_matches(n, self.heads):
                m.requires_grad_(True)

    # ---- artifacts: by default the trainable tensors (small methods); override for others
    def gather(self, model: nn.Module) -> None:
        """Called on every process before the main one calls :meth:`save`: a method whose model may be
        sharded (FSDP) collects it here (a collective); others need nothing."""

    def save(self, model: nn.Module, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(state, str(directory / "trainable.safetensors"), metadata={"method": self.name})

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        """Put a saved artifact onto a fresh base model (as built by rocoft.models.build_model)."""
        result = base.load_state_dict(load_file(str(Path(directory) / "trainable.safetensors")), strict=False)
        if result.unexpected_keys:
            raise UserError(f"{directory} does not fit this model: unexpected {result.unexpected_keys[:3]}")
        return base

    def merged(self, model: nn.Module) -> nn.Module | None:
        """A plain transformers model with the update merged in (None if the method cannot merge)."""
        return model

    def parameter_report(self, model: nn.Module, base_total: int) -> dict:
        """Trainable parameters with / without the task head, the base model's total, and the parameters
        the method adds to the model (Table 3's APs: 0 for RoCoFT, BitFit and full fine-tuning)."""
        counts = count_parameters(model)  # RoCoFT values counted once (they live inside their weight)
        trainable = counts["trainable"]
        heads = {id(p): p for n, m in model.named_modules() if self.heads and name_matches(n, self.heads)
                 for p in m.parameters() if p.requires_grad}
        copies = sum(p.numel() for n, p in model.named_parameters() if ".modules_to_save." in n)  # peft head copies
        head = sum(p.numel() for p in heads.values())
        return {"trainable": trainable, "trainable_without_head": trainable - head, "total": base_total,
                "additional": counts["total"] - copies - base_total,
                "trainable_percent": 100.0 * trainable / base_total}


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def require_trainable(model: nn.Module, method: Method) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"method={method.name} leaves nothing to train in {method.model_cfg.name} (family "
                        f"{method.model_cfg.family}, {method.kind}): the model has no parameter it trains.")


def is_norm(module: nn.Module) -> bool:
    """LayerNorm and the RMSNorm variants of decoder families (matched by class name)."""
    return isinstance(module, nn.LayerNorm) or "RMSNorm" in type(module).__name__ or (
        "LayerNorm" in type(module).__name__)


__all__ = ["KINDS", "Method", "freeze", "is_norm", "plain", "require_trainable"]
