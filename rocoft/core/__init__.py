"""RoCoFT: row/column fine-tuning, as a library (one layer, injected through peft)."""

from .config import BIAS_MODES, RoCoFTConfig
from .io import adapter_state_dict, load_adapter, save_adapter
from .layer import RoCoFTSlice
from .model import apply_rocoft, calibrate_input_norms, count_parameters, merge_rocoft, rocoft_layers
from .peft_tuner import RoCoFTLayer, RoCoFTModel  # registers "rocoft" with peft
from .selection import STRATEGIES, sample_entries, select_indices, wanda_scores
from .targets import FAMILY_TARGETS, default_targets, find_targets, name_matches

__all__ = [
    "BIAS_MODES", "FAMILY_TARGETS", "STRATEGIES", "RoCoFTConfig", "RoCoFTLayer", "RoCoFTModel", "RoCoFTSlice",
    "apply_rocoft", "adapter_state_dict", "calibrate_input_norms", "load_adapter", "save_adapter", "count_parameters",
    "default_targets", "find_targets", "merge_rocoft", "name_matches", "rocoft_layers", "sample_entries",
    "select_indices", "wanda_scores",
]
