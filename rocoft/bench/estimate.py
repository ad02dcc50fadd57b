"""Peak GPU tensor memory predicted without a GPU (``--estimate-memory``).

Every variant runs 3 training steps under torch's FakeTensorMode on the CPU (tensors with shapes and
dtypes but no data, so no arithmetic: seconds even at LLaMA-2-7B shape), with the CUDA defaults (dtype,
autocast, batch, sequence length). A dispatch mode (:class:`LiveStorageBytes`) counts every tensor
storage from its creation until it is freed, rounded up to 512 bytes like CUDA's caching allocator; the
peak is the prediction of ``max_memory_allocated`` minus what lies outside torch's tensors (cuBLAS
workspaces, the CUDA context). Attention runs torch's CPU kernels (flash-style SDPA: output + log-sum-exp
saved, like CUDA's flash kernel). No step times.

:class:`LiveStorageBytes` also works on real tensors: ``with LiveStorageBytes() as live: ...`` gives the
peak of live storages over any block of code (a test uses it to count the activations a layer keeps).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .measure import MB, train_step
from .shapes import DTYPES, Settings, build_model, make_inputs
from .variants import Variant, adapt


class LiveStorageBytes(TorchDispatchMode):
    """A dispatch mode that counts the bytes of live tensor storages and their peak.

    Each storage counts once, from the op that created it until Python frees it (a weakref finalizer),
    rounded up to CUDA's 512-byte allocation granularity. ``track`` adds tensors made before the mode."""

    GRANULE = 512

    def __init__(self):
        super().__init__()
        self.seen, self.current, self.peak = WeakIdKeyDictionary(), 0, 0

    def track(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        st = t.untyped_storage()
        if st in self.seen:
            return
        n = -(-st.nbytes() // self.GRANULE) * self.GRANULE
        self.seen[st] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, n)

    def _free(self, n: int) -> None:
        self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.track(t)
        return out


def estimate_memory(settings: Settings, variant: Variant, steps: int = 3) -> dict:
    """Peak tensor memory of ``steps`` training steps of ``variant``, under FakeTensorMode (no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = build_model(settings.shape, torch.device("meta"), DTYPES[settings.dtype], settings.seed)
    model, counts = adapt(model, variant, settings.lora_dropout)  # on meta: selection indices are real
    shapes = {k: (v.shape, v.dtype) for k, v in make_inputs(settings.shape, settings.batch, settings.seq_len,
                                                              torch.device("meta"), settings.input_seed).items()
              if k != "attention_mask"}  # all ones: the same as no mask (and it needs no data-dependent check)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu").train()  # fake CPU tensors: shapes and dtypes, no data
        inputs = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, foreach=True) if params else None  # CUDA's default
        live = LiveStorageBytes()
        for t in [*model.parameters(), *model.buffers(), *inputs.values()]:
            live.track(t)
        static = live.current
        with live:
            for _ in range(steps):
                train_step(model, inputs, optimizer, settings.autocast_dtype, torch.device("cpu"))
        peak = live.peak
    return dict(**counts, static_mb=static / MB, peak_mb=peak / MB,
                memory_measure="fake_tensor_estimate", step_ms=None, step_ms_all=[])
