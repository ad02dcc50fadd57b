"""Configuration of a RoCoFT adaptation: a ``peft.PeftConfig``, so the same object drives
``rocoft.apply_rocoft`` and ``peft.get_peft_model``."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig
from peft.utils import PeftType

from .layer import AXES
from .selection import STRATEGIES

BIAS_MODES = ("none", "rocoft_only", "all")  # "targeted" is accepted as a synonym of "rocoft_only"


def _ensure_peft_type() -> PeftType:
    """Add ROCOFT to peft's PeftType enum (peft only registers methods whose type is in that enum)."""
    if "ROCOFT" not in PeftType.__members__:
        member = str.__new__(PeftType, "ROCOFT")
        member._name_, member._value_, member._sort_order_ = "ROCOFT", "ROCOFT", len(PeftType.__members__)
        type.__setattr__(PeftType, "ROCOFT", member)
        PeftType._member_map_["ROCOFT"] = member
        PeftType._value2member_map_["ROCOFT"] = member
        PeftType._member_names_.append("ROCOFT")
    return PeftType.ROCOFT


@dataclass
class RoCoFTConfig(PeftConfig):
    """What RoCoFT trains. Fields map one-to-one to the method configs in ``conf/method``."""

    axis: str = field(default="row", metadata={"help": "'row' (r rows of W), 'column' (r columns) or 'entry' "
                                                       "(each entry with probability p: Appendix B.2 ablation)."})
    rank: int = field(default=3, metadata={"help": "Rows/columns trained per targeted matrix (row/column axes)."})
    p: float | None = field(default=None, metadata={"help": "Probability that an entry trains (axis='entry')."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt, as for LoRA: a string is a regex matching the whole name; "
                                        "a list holds names matched exactly or as a dotted suffix (or 're:<regex>'); "
                                        "None = the family's default (rocoft.core.targets)."})
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module-name patterns never adapted."})
    bias: str = field(default="none", metadata={"help": "'none', 'rocoft_only' (= 'targeted': biases of adapted "
                                                        "layers) or 'all' (every bias of the model)."})
    selection: str = field(default="first", metadata={"help": f"Which rows/columns: one of {STRATEGIES}."})
    seed: int = field(default=0, metadata={"help": "Seed of the 'random' selection and of entry sampling."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved with the adapter (task heads)."})
    master_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the trained values; None = float32 for half-precision bases "
                                        "(unless peft's autocast_adapter_dtype=False: then the base's dtype)."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: start from the pretrained values (the model is unchanged until "
                                        "trained). False: add seeded noise, so that merging / disabling is "
                                        "observable (peft's testing convention)."})
    reuse_saved_inputs: bool = field(
        default=True, metadata={"help": "Rows: rebuild a layer's input in backward from tensors its producer already "
                                        "saved (e.g. SwiGLU's act(gate) * up) instead of keeping a copy. Exact; "
                                        "saves activation memory. False: always keep the input."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = _ensure_peft_type()
        # Not a field (never saved), as SHiRA's mask_fn: ``index_fn(layer_name, weight) -> indices or None``
        # gives precomputed indices (apply_rocoft's Wanda calibration, load_adapter's saved indices).
        self.index_fn = None
        if self.bias == "targeted":
            self.bias = "rocoft_only"
        if self.axis not in AXES:
            raise ValueError(f"RoCoFT axis must be one of {AXES}, got {self.axis!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"RoCoFT bias must be one of {BIAS_MODES} (or 'targeted'), got {self.bias!r}")
        if self.selection not in STRATEGIES:
            raise ValueError(f"RoCoFT selection must be one of {STRATEGIES}, got {self.selection!r}")
        if self.axis == "entry":
            if self.p is None or not 0 < float(self.p) <= 1:
                raise ValueError(f"RoCoFT axis='entry' needs a probability p in (0, 1], got {self.p!r}")
        elif isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"RoCoFT rank must be a positive integer, got {self.rank!r}")
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, list(value))
