"""Configuration of a RoCoFT adaptation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .layer import AXES
from .selection import STRATEGIES

BIAS_MODES = ("none", "targeted", "all")


@dataclass
class RoCoFTConfig:
    """What RoCoFT trains. Every field maps one-to-one to the method config in ``conf/method``."""

    axis: str = field(default="row", metadata={"help": "'row' (train r rows of W) or 'column'."})
    rank: int = field(default=3, metadata={"help": "Rows/columns trained per targeted matrix."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module-name patterns to adapt (suffix match, or 're:<regex>'); "
                                        "None = the architecture family's default (rocoft.core.targets)."})
    bias: str = field(default="none", metadata={"help": "'none', 'targeted' (biases of adapted layers) or 'all'."})
    selection: str = field(default="first", metadata={"help": f"One of {STRATEGIES}."})
    seed: int = field(default=0, metadata={"help": "Seed of the 'random' selection."})
    trainable_modules: list[str] = field(
        default_factory=list, metadata={"help": "Patterns of modules trained fully (task heads)."})
    master_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the trained slice; None = fp32 for half-precision bases."})

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"RoCoFT axis must be one of {AXES}, got {self.axis!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"RoCoFT bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.selection not in STRATEGIES:
            raise ValueError(f"RoCoFT selection must be one of {STRATEGIES}, got {self.selection!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"RoCoFT rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = None if self.target_modules is None else list(self.target_modules)
        self.trainable_modules = list(self.trainable_modules or [])

    def to_dict(self) -> dict:
        return asdict(self)
