"""The empirical NTK of a vector function, exact and memory-bounded.

For f(x) in R^C and a parameter set S, ``K[i, c, j, d] = <d f_c(x_i) / d S, d f_d(x_j) / d S>``
(``[N, C, M, C]``, float64). Nothing of size |S| is ever held per example: each parameter's
per-example gradient is ``L_i^T R_i`` (see :mod:`rocoft.ntk.capture`), so

    <L_i^T R_i, L_j^T R_j> = sum over token pairs (t, s) of (L_i L_j^T)[t, s] * (R_i R_j^T)[t, s]

(the "ghost" inner product of DP-SGD codes, here across examples): two Gram matrices over tokens
instead of a d_out x d_in gradient. Per parameter and pair of chunks the engine takes that
factored form or materialises the chunks' per-example gradients (whichever costs fewer
multiply-adds: T_i T_j (d_out + d_in) against d_out d_in per pair, roughly); a row subset slices
L's columns, a column subset R's, LoRA's B replaces R by s X A^T. Tied weights add the cross terms
of their uses (an output embedding against the input one). Gram products run in the factors' dtype
(the model's unless ``dtype`` says otherwise); their products and every sum are float64.

Examples come in chunks (the batches given): the first set's chunks are kept as factors, the second
set is streamed one chunk at a time; a symmetric kernel computes the blocks on and above the
diagonal only.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import torch
from torch import nn

from .capture import Capturer, Chunk, Factor, KNOWN, is_conv1d
from .params import ParamSet, Selection, owners

MODES = ("auto", "factored", "materialised")


def aligned(a: Factor, b: Factor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both factors' values over their common columns, in the same order."""
    if a.cols is None and b.cols is None:
        return a.vals, b.vals
    if a.cols is None:
        return a.vals[..., b.cols.to(a.vals.device)], b.vals
    if b.cols is None:
        return a.vals, b.vals[..., a.cols.to(b.vals.device)]
    return a.vals[..., torch.isin(a.cols, b.cols)], b.vals[..., torch.isin(b.cols, a.cols)]


def aligned_width(a: Factor, b: Factor) -> int:
    """The number of columns :func:`aligned` keeps (without gathering them)."""
    if a.cols is None:
        return a.size if b.cols is None else b.width
    return a.width if b.cols is None else int(torch.isin(a.cols, b.cols).sum())


def gram(a: Factor, b: Factor) -> torch.Tensor:
    """Token-pair inner products [ca, Ba, Ta, cb, Bb, Tb] (one GEMM)."""
    va, vb = aligned(a, b)
    k = va.shape[-1]
    if k == 0:
        return va.new_zeros(*va.shape[:-1], *vb.shape[:-1])
    return (va.reshape(-1, k) @ vb.reshape(-1, k).T).reshape(*va.shape[:-1], *vb.shape[:-1])


def _to_block(t: torch.Tensor, classes: int) -> torch.Tensor:
    """[ca, Ba, cb, Bb] (ca, cb in {1, C}) -> [Ba, C, Bb, C] float64."""
    return t.expand(classes, t.shape[1], classes, t.shape[3]).permute(1, 0, 3, 2).double()


def _outer(l: torch.Tensor, r: torch.Tensor, classes: int) -> torch.Tensor:
    """Materialised per-example gradients [C, B, k0 * k1] from L [c, B, T, k0] and R [c, B, T, k1]."""
    shape = (classes, *l.shape[1:-1])
    g = torch.einsum("cbtk,cbtl->cbkl", l.expand(*shape, l.shape[-1]), r.expand(*shape, r.shape[-1]))
    return g.reshape(classes, l.shape[1], -1)


def _gemm_block(ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """<ga[c, i], gb[d, j]> for [C, Ba, P] x [C, Bb, P] -> [Ba, C, Bb, C] float64."""
    c, na, p = ga.shape
    out = ga.reshape(c * na, p) @ gb.reshape(gb.shape[0] * gb.shape[1], p).T
    return out.double().reshape(c, na, gb.shape[0], gb.shape[1]).permute(1, 0, 3, 2)


class KernelEngine:
    """eNTKs of ``fn`` (batch -> [B, C]) for several parameter sets at once, from one forward and C
    backward passes per chunk of examples.

    ``sets``: name -> :class:`ParamSet` (or one set). ``mode``: ``auto`` (cheaper form per parameter
    and pair of chunks), ``factored`` or ``materialised`` (tests use both). ``dtype``: the dtype of the
    stored factors and Gram products (None: the model's; float64 for an all-float64 computation)."""

    def __init__(self, model: nn.Module, fn, sets, *, dtype: torch.dtype | None = None, mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"eNTK mode must be one of {MODES}, got {mode!r}")
        self.sets = {sets.name: sets} if isinstance(sets, ParamSet) else dict(sets)
        self.mode = mode
        self.terms: dict[tuple, tuple[str, Selection]] = {}
        self.set_terms: dict[str, list[tuple]] = {}
        for sname, pset in self.sets.items():
            keys = []
            for pname, sel in pset.selections.items():
                key = (pname, sel.key())
                self.terms[key] = (pname, sel)
                keys.append(key)
            self.set_terms[sname] = keys
        order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
        self.terms = dict(sorted(self.terms.items(), key=lambda kv: order.get(kv[0][0], -1)))
        self._check(model)
        self.capture = Capturer(model, fn, sorted({p for p, _ in self.terms.values()}), dtype)
        self.stats = {"capture_s": 0.0, "pairs_s": 0.0, "chunks": 0, "blocks": 0, "factored": 0, "materialised": 0}

    def _check(self, model: nn.Module) -> None:
        held = owners(model)
        for pname, sel in self.terms.values():
            mods = [m for _, m in held.get(pname, [])]
            known = [m for m in mods if isinstance(m, KNOWN) or is_conv1d(m)]
            if sel.kind != "full" and (not known or not pname.endswith("weight")):
                raise ValueError(f"eNTK: a {sel.kind} selection needs a Linear / Embedding / Conv1D weight; "
                                 f"{pname!r} is held by {[type(m).__name__ for m in mods]}")
            if sel.kind == "lora" and not all(isinstance(m, nn.Linear) for m in known):
                raise ValueError(f"eNTK: LoRA selections apply to nn.Linear weights; {pname!r} is not one")

    def chunk(self, batch) -> Chunk:
        """The factors of one batch of examples."""
        t0 = time.perf_counter()
        out = self.capture(batch)
        self.stats["capture_s"] += time.perf_counter() - t0
        self.stats["chunks"] += 1
        return out

    # ---- one block of the kernel: chunk A x chunk B -------------------------------------------------
    def block(self, a: Chunk, b: Chunk) -> dict[str, torch.Tensor]:
        """Every set's kernel block [Ba, C, Bb, C] between two chunks."""
        t0 = time.perf_counter()
        classes = a.classes
        memo: dict = {"grams": OrderedDict()}
        terms = {key: self._term(a, b, pname, sel, memo) for key, (pname, sel) in self.terms.items()}
        out = {}
        for sname, keys in self.set_terms.items():
            total = torch.zeros(a.n, classes, b.n, classes, dtype=torch.float64)
            for key in keys:
                if terms[key] is not None:
                    total += terms[key]
            out[sname] = total
        self.stats["pairs_s"] += time.perf_counter() - t0
        self.stats["blocks"] += 1
        return out

    def _side(self, chunk: Chunk, pname: str, sel: Selection, memo: dict) -> list[tuple]:
        """The (L, R) pairs of a parameter's uses in ``chunk`` under ``sel``, with memo keys."""
        pairs = []
        for u, (lf, rf) in enumerate(chunk.uses.get(pname, [])):
            lkey, rkey = (id(lf), "all"), (id(rf), "all")
            if sel.kind == "rows":
                lkey = (id(lf), sel.key())
                lf = memo.setdefault(("sel",) + lkey, lf.select(sel.index))
            elif sel.kind == "cols":
                rkey = (id(rf), sel.key())
                rf = memo.setdefault(("sel",) + rkey, rf.select(sel.index))
            elif sel.kind == "lora":
                rkey = (id(rf), sel.key())
                if ("sel",) + rkey not in memo:
                    memo[("sel",) + rkey] = rf.transform(sel.lora_a, sel.scale)
                rf = memo[("sel",) + rkey]
            pairs.append((lf, rf, lkey, rkey))
        return pairs

    def _gram(self, fa, fb, ka, kb, memo) -> torch.Tensor:
        """Gram products, remembered for the next few terms (q, k and v share their input's)."""
        grams, key = memo["grams"], (ka, kb)
        if key in grams:
            grams.move_to_end(key)
        else:
            grams[key] = gram(fa, fb).double()
            if len(grams) > 6:
                grams.popitem(last=False)
        return grams[key]

    def _term(self, a: Chunk, b: Chunk, pname: str, sel: Selection, memo: dict) -> torch.Tensor | None:
        classes = a.classes
        if pname in a.grads or pname in b.grads:
            if pname not in a.grads or pname not in b.grads:
                return None
            return _gemm_block(a.grads[pname], b.grads[pname])
        pa, pb = self._side(a, pname, sel, memo), self._side(b, pname, sel, memo)
        if not pa or not pb:
            return None
        if len(pa) == 1 and len(pb) == 1 and self._materialise(pa[0], pb[0], classes):
            (la, ra, *_), (lb, rb, *_) = pa[0], pb[0]
            (la, lb), (ra, rb) = aligned(la, lb), aligned(ra, rb)
            self.stats["materialised"] += 1
            return _gemm_block(_outer(la, ra, classes), _outer(lb, rb, classes))
        self.stats["factored"] += 1
        total = None
        for la, ra, kla, kra in pa:
            for lb, rb, klb, krb in pb:
                prod = (self._gram(la, lb, kla, klb, memo) * self._gram(ra, rb, kra, krb, memo)).sum((2, 5))
                total = prod if total is None else total + prod  # shapes agree: the same roles in every use
        return _to_block(total, classes)

    def _materialise(self, ua, ub, classes: int) -> bool:
        if self.mode != "auto":
            return self.mode == "materialised"
        (la, ra, *_), (lb, rb, *_) = ua, ub
        k0, k1 = aligned_width(la, lb), aligned_width(ra, rb)
        na, ta, nb, tb = la.vals.shape[1], la.vals.shape[2], lb.vals.shape[1], lb.vals.shape[2]
        factored = na * ta * nb * tb * (la.vals.shape[0] * lb.vals.shape[0] * k0 + ra.vals.shape[0] * rb.vals.shape[0]
                                        * k1 + classes * classes)
        materialised = k0 * k1 * (classes * (na * ta + nb * tb) + classes * classes * na * nb)
        return materialised < factored

    # ---- whole kernels ----------------------------------------------------------------------------
    def kernels(self, batches_a, batches_b=None) -> dict[str, torch.Tensor]:
        """``{set: K [N, C, M, C]}`` between the examples of ``batches_a`` and ``batches_b`` (None: the
        symmetric kernel of ``batches_a`` with itself). Batches are model-input dicts that ``fn`` takes."""
        chunks_a = [self.chunk(b) for b in batches_a]
        if not chunks_a:
            raise ValueError("eNTK: no examples in the first set")
        offs_a = _offsets([c.n for c in chunks_a])
        classes = chunks_a[0].classes
        if batches_b is None:
            n = offs_a[-1]
            out = {s: torch.zeros(n, classes, n, classes, dtype=torch.float64) for s in self.sets}
            for i, ca in enumerate(chunks_a):
                for j in range(i, len(chunks_a)):
                    blocks = self.block(ca, chunks_a[j])
                    for s, blk in blocks.items():
                        out[s][offs_a[i]:offs_a[i + 1], :, offs_a[j]:offs_a[j + 1]] = blk
                        out[s][offs_a[j]:offs_a[j + 1], :, offs_a[i]:offs_a[i + 1]] = blk.permute(2, 3, 0, 1)
            return out
        columns: dict[str, list] = {s: [] for s in self.sets}
        for batch in batches_b:
            cb = self.chunk(batch)
            rows = [self.block(ca, cb) for ca in chunks_a]
            for s in self.sets:
                columns[s].append(torch.cat([r[s] for r in rows], 0))
            del cb
        return {s: torch.cat(cols, 2) for s, cols in columns.items()}


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def compute_kernels(model: nn.Module, fn, sets, batches_a, batches_b=None, **kwargs) -> dict[str, torch.Tensor]:
    """One-call form of :class:`KernelEngine`: ``{set name: K [N, C, M, C]}``."""
    return KernelEngine(model, fn, sets, **kwargs).kernels(batches_a, batches_b)
