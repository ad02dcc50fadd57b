"""RoCoFT rows / columns / random entries, through the library in ``rocoft.core``."""

from __future__ import annotations

from ..core import RoCoFTConfig, apply_rocoft, load_adapter, merge_rocoft, save_adapter
from ..errors import UserError
from .base import Method, plain


class RoCoFTMethod(Method):
    @property
    def rank(self):
        return None if self.cfg.axis == "entry" else self.cfg.get("rank")

    def config(self) -> RoCoFTConfig:
        targets = self.cfg.get("target_modules") or self.model_cfg.get("target_modules")
        try:
            return RoCoFTConfig(
                axis=self.cfg.axis, rank=1 if self.cfg.get("rank") is None else self.cfg.rank, p=self.cfg.get("p"),
                bias=self.cfg.bias, selection=self.cfg.selection, seed=self.seed,
                target_modules=None if targets is None else list(plain(targets)),
                modules_to_save=self.heads or None, master_dtype=self.cfg.get("master_dtype"),
                reuse_saved_inputs=bool(self.cfg.get("reuse_saved_inputs", True)))
        except ValueError as e:
            raise UserError(f"method={self.name}: {e}") from None

    def apply(self, model, *, calibration_batches=None, **_):
        try:
            return apply_rocoft(model, self.config(), calibration_batches=calibration_batches)
        except ValueError as e:
            raise UserError(f"method={self.name}: {e}") from None

    def save(self, model, directory):
        save_adapter(model, self.config(), directory, base_model_name_or_path=self.model_cfg.get("hub_id"))

    def load(self, base, directory):
        return load_adapter(base, directory)

    def merged(self, model):
        return merge_rocoft(model)
