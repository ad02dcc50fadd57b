"""Comparing and storing kernels: the paper's relative difference (Tables 5, 13), eigenvalue spectra
(Figure 5), and kernels saved with their metadata and reused while their inputs are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch


def relative_difference(k_subset: torch.Tensor, k_full: torch.Tensor, p: int = 2) -> float:
    """``|| K_S / ||K_S||_p - K / ||K||_p ||_p`` on the flattened kernels (p = 1 or 2)."""
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    a, b = k_subset.double().flatten(), k_full.double().flatten()
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in size: {tuple(k_subset.shape)} vs {tuple(k_full.shape)}")
    na, nb = torch.linalg.vector_norm(a, p), torch.linalg.vector_norm(b, p)
    if na == 0 or nb == 0:
        raise ValueError("relative difference of an all-zero kernel is undefined")
    return float(torch.linalg.vector_norm(a / na - b / nb, p))


def spectrum(k_train: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, float64) of a train kernel [N, C, N, C] as an (N*C) x (N*C) matrix."""
    n = k_train.shape[0] * k_train.shape[1]
    mat = k_train.double().reshape(n, n)
    return torch.linalg.eigvalsh((mat + mat.T) / 2).flip(0)


def inputs_hash(*parts) -> str:
    """sha256 over tensors (dtype, shape, bytes) and JSON-able values, in order: the identity of a kernel's inputs."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"tensor:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(f"key:{k}".encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"seq:{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


def save_kernel(path, kernels: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``kernels`` and ``meta`` (JSON-able: task, k, seed, parameter sets and counts, model, inputs
    hash ...) to ``path`` (``.pt``) atomically, with ``meta`` also as a readable ``.json`` next to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernel-", suffix=".pt")
    with os.fdopen(fd, "wb") as f:
        torch.save({"kernels": kernels, "meta": meta}, f)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_kernel(path) -> tuple[dict[str, torch.Tensor], dict]:
    data = torch.load(Path(path), weights_only=True)
    return data["kernels"], data["meta"]


def cached_kernels(path, meta: dict, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """The kernels stored at ``path`` if their ``meta`` (which should carry an inputs hash) equals
    ``meta``, else ``compute()`` saved there. Returns (kernels, reused)."""
    path = Path(path)
    if path.is_file():
        kernels, stored = load_kernel(path)
        if json.loads(json.dumps(stored, default=str)) == json.loads(json.dumps(meta, default=str)):
            return kernels, True
    kernels = compute()
    save_kernel(path, kernels, meta)
    return kernels, False
