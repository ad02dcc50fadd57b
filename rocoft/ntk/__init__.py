"""Empirical neural tangent kernels of a model's label-word logits (the paper's Section 5), exact and
memory-bounded: parameter sets (:mod:`.params`), the kernel engine (:mod:`.kernel`), a brute-force
reference (:mod:`.reference`), solvers (:mod:`.solvers`) and kernel comparisons / storage (:mod:`.analysis`)."""

from .functions import causal_lm_logits, masked_lm_logits
from .kernel import KernelEngine, compute_kernels
from .params import (GROUPS, ParamSet, Selection, bitfit_set, full_set, group_set, group_sets, lora_set,
                     rocoft_set)
from .reference import brute_force_kernel

__all__ = ["GROUPS", "KernelEngine", "ParamSet", "Selection", "bitfit_set", "brute_force_kernel",
           "causal_lm_logits", "compute_kernels", "full_set", "group_set", "group_sets", "lora_set",
           "masked_lm_logits", "rocoft_set"]
