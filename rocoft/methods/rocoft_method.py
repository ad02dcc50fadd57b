"""RoCoFT rows / columns / random entries, through the library in ``rocoft.core``."""

from __future__ import annotations

from ..core import RoCoFTConfig, apply_rocoft, load_adapter, merge_rocoft, save_adapter
from ..errors import UserError
from .base import Method


class RoCoFTMethod(Method):
    """Train r rows or columns (or sampled entries) of every targeted weight matrix, in place.

    The arguments are :class:`rocoft.core.RoCoFTConfig`'s (see its field help), plus
    ``calibration_batches``: training batches whose real layer inputs give the Wanda scores of the
    ``max`` / ``min`` / ``mixed`` selections. ``target_modules=None`` adapts ``model.target_modules``.
    """

    sharded_engines_refused = ("the engine gathers, shards or copies the weights whose rows/columns RoCoFT trains "
                               "in place, so they would silently keep their pretrained values")

    def __init__(self, name: str, *, axis: str = "row", rank: int | None = 3, p: float | None = None,
                 bias: str = "none", selection: str = "first", calibration_batches: int = 0,
                 target_modules: list[str] | str | None = None, master_dtype: str | None = None,
                 reuse_saved_inputs: bool = True, **context):
        super().__init__(name, rank=None if axis == "entry" else rank, **context)
        self.calibration_batches = calibration_batches
        targets = self.model_cfg.target_modules if target_modules is None else target_modules
        if targets is not None and not isinstance(targets, str):
            targets = list(targets)
        self._config = dict(axis=axis, p=p, bias=bias, selection=selection, seed=self.seed,
                            **({} if axis == "entry" else {"rank": rank}),  # entries: p, not a rank
                            target_modules=targets,  # None: the family's default targets (rocoft.core.targets)
                            modules_to_save=self.heads or None, master_dtype=master_dtype,
                            reuse_saved_inputs=reuse_saved_inputs)
        self.config()  # a bad setting fails now, with the method's name

    def config(self) -> RoCoFTConfig:
        """A fresh :class:`RoCoFTConfig` of these settings (peft may adjust the one it injects with)."""
        try:
            return RoCoFTConfig(**self._config)
        except ValueError as e:
            raise UserError(f"method={self.name}: {e}") from None

    def apply(self, model, *, calibration_batches=None, **_):
        try:
            return apply_rocoft(model, self.config(), calibration_batches=calibration_batches)
        except ValueError as e:
            raise UserError(f"method={self.name}: {e}") from None

    def save(self, model, directory):
        save_adapter(model, self.config(), directory, base_model_name_or_path=self.model_cfg.hub_id)

    def load(self, base, directory):
        return load_adapter(base, directory)

    def merged(self, model):
        return merge_rocoft(model)
