"""One eNTK run of the paper's Section 5 (``scripts/ntk.py``): a model x prompt task x k x seed.

:func:`compute` builds the task's k-shot split for the seed (the same rows a prompt-based fine-tuning run of
``train.py`` trains on), the label-word function of the model's head (mask position or next token), the
parameter sets of ``cfg.sets`` (``full``, ``rows``, ``cols``, ``lora``, ``bitfit``, ``groups``: one set per
parameter group), and their kernels train x train and train x test, every set from the same forward and
backward passes (:class:`rocoft.ntk.KernelEngine`). Each set's kernels are stored in ``<kernel_dir>/<set>.pt``
with their metadata and reused while the inputs hash (model weights, prompts, label words, the set's entries)
is unchanged. It returns the run's metrics: accuracy per set and solver, the relative differences
(p = 1, 2) of every set to the full kernel (train kernels), the train kernel's eigenvalues, parameter counts
per set and group, time and peak memory.

:func:`execute` owns the run directory through :mod:`rocoft.rundir` (skip a complete run, refuse one of other
settings, the lock, ``status.json``, stop signals; ``metrics.json`` written last and atomically).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

from ..errors import UserError
from .analysis import cached_kernels, inputs_hash, relative_difference, spectrum
from .functions import causal_lm_logits, masked_lm_logits
from .kernel import KernelEngine
from .params import bitfit_set, full_set, group_sets, lora_set, rocoft_set
from .solvers import kernel_logistic, kernel_ridge, reference_logistic

SET_CHOICES = ("full", "rows", "cols", "lora", "bitfit", "groups")
SOLVERS = {"reference": reference_logistic, "klr": kernel_logistic, "ridge": kernel_ridge}
KERNEL_FORMAT = 1


def paper_method(set_name: str, cfg) -> tuple[str, int | None]:
    """The (method, rank) a set's numbers are reported under (the paper's rows of Tables 4, 5, 13)."""
    if set_name == "full":
        return "ntk_full", None
    if set_name in ("rows", "cols"):
        return ("ntk_rocoft_row" if set_name == "rows" else "ntk_rocoft_col"), int(cfg.rank)
    if set_name == "lora":
        return "ntk_lora", int(cfg.lora.rank)
    return f"ntk_{set_name}", None


def validate(cfg) -> None:
    """One :class:`UserError` for every bad ntk setting (before anything is written)."""
    problems = []
    sets = list(cfg.sets or [])
    bad = [s for s in sets if s not in SET_CHOICES]
    if not sets or bad:
        problems.append(f"sets={sets} must be a non-empty list of {', '.join(SET_CHOICES)}")
    solvers = list(cfg.solvers or [])
    bad = [s for s in solvers if s not in SOLVERS]
    if not solvers or bad:
        problems.append(f"solvers={solvers} must be a non-empty list of {', '.join(SOLVERS)}")
    for key, minimum in (("rank", 1), ("k", 1), ("batch_size", 1), ("lora.rank", 1)):
        from omegaconf import OmegaConf
        v = OmegaConf.select(cfg, key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
            problems.append(f"{key}={v!r} must be an integer >= {minimum}")
    if "reference" in solvers and isinstance(cfg.k, int) and cfg.k < 5:
        problems.append(f"k={cfg.k}: the reference solver's 5-fold stratified cross-validation needs k >= 5 "
                        f"examples per class (or solvers=[klr] / [ridge])")
    if cfg.max_test is not None and not (isinstance(cfg.max_test, int) and cfg.max_test >= 1):
        problems.append(f"max_test={cfg.max_test!r} must be null or an integer >= 1")
    if cfg.eigenvalues is not None and not (isinstance(cfg.eigenvalues, int) and cfg.eigenvalues >= 1):
        problems.append(f"eigenvalues={cfg.eigenvalues!r} must be null (all) or an integer >= 1 (the top ones)")
    if str(cfg.task.get("kind")) != "prompt":
        problems.append(f"task={cfg.task.name} is not a prompt-based task (kind: prompt): choose one of the "
                        f"<name>_prompt tasks, e.g. task=mr_prompt")
    if problems:
        raise UserError("Invalid ntk setting" + ("s: " if len(problems) > 1 else ": ") + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------------------------- inputs
def batches(prompts, head: str, batch_size: int) -> tuple[list[dict], list[int]]:
    """Right-padded batches of prompts sorted by length (less padding), with the position whose logits are
    read (``mask_pos`` / ``target_pos``); returns (batches, order) with ``order[j]`` the example at sorted
    place j."""
    order = sorted(range(len(prompts.input_ids)), key=lambda i: (len(prompts.input_ids[i]), i))
    key = "mask_pos" if head == "masked_lm" else "target_pos"
    out = []
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        width = max(len(prompts.input_ids[i]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            n = len(prompts.input_ids[i])
            ids[r, :n], mask[r, :n] = torch.tensor(prompts.input_ids[i]), 1
        out.append({"input_ids": ids, "attention_mask": mask,
                    key: torch.tensor([prompts.positions[i] for i in rows])})
    return out, order


def unsort(k: torch.Tensor, order_a, order_b) -> torch.Tensor:
    """A kernel computed on length-sorted examples, back in the examples' own order."""
    ia, ib = torch.empty(len(order_a), dtype=torch.long), torch.empty(len(order_b), dtype=torch.long)
    ia[torch.tensor(order_a)], ib[torch.tensor(order_b)] = torch.arange(len(order_a)), torch.arange(len(order_b))
    return k[ia][:, :, ib]


def weights_fingerprint(model) -> list:
    """Per parameter: name, shape, sum and sum of squares (float64): a cheap identity of the weights."""
    out = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            d = p.detach().double()
            out.append([name, list(p.shape), float(d.sum()), float((d * d).sum())])
    return out


def build_sets(model, cfg, calibration=None) -> dict:
    """name -> ParamSet for ``cfg.sets`` (``groups`` expands to ``group_<g>`` per parameter group)."""
    out = {}
    targets = cfg.model.get("target_modules")
    targets = list(targets) if targets is not None else None
    for name in cfg.sets:
        if name == "full":
            out["full"] = full_set(model)
        elif name in ("rows", "cols"):
            out[name] = rocoft_set(model, "row" if name == "rows" else "column", int(cfg.rank),
                                   selection=cfg.selection, seed=int(cfg.seed), target_modules=targets,
                                   calibration_batches=calibration, name=name)
        elif name == "lora":
            out["lora"] = lora_set(model, int(cfg.lora.rank), float(cfg.lora.alpha), seed=int(cfg.seed),
                                   target_modules=targets, name="lora")
        elif name == "bitfit":
            out["bitfit"] = bitfit_set(model)
        elif name == "groups":
            out.update({f"group_{g}": s for g, s in group_sets(model).items()})
    empty = [n for n, s in out.items() if s.counts["total"] == 0]
    if empty:
        print(f"note: parameter set(s) {empty} have no parameters in {cfg.model.name} (e.g. BitFit without biases): "
              f"left out", file=sys.stderr)
    return {n: s for n, s in out.items() if n not in empty}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the run
def compute(cfg, run_dir: Path) -> dict:
    """Kernels (cached), solvers, comparisons: the run's metrics (see the module docstring)."""
    from omegaconf import OmegaConf

    from ..models import build_model, load_tokenizer
    from ..tasks import build_task
    from ..validation import check_positions

    t_start = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    task = build_task(cfg.task, cfg.model)
    head = task.kind
    tokenizer = load_tokenizer(cfg.model)
    splits = task.load()
    train_df, test_df = splits["train"], splits["test"]
    max_length = int(cfg.data.max_length)
    p_train = task.prompts(train_df, tokenizer, max_length, head)
    p_test = task.prompts(test_df, tokenizer, max_length, head)
    model = build_model(cfg.model, head, tokenizer=tokenizer).eval()
    check_positions(max_length, model.config, cfg.model.name)
    for p in model.parameters():
        p.requires_grad_(True)
    fn = (masked_lm_logits if head == "masked_lm" else causal_lm_logits)(model, p_train.label_word_ids)
    b_train, o_train = batches(p_train, head, int(cfg.batch_size))
    b_test, o_test = batches(p_test, head, int(cfg.batch_size))
    calibration = b_train if cfg.selection in ("max", "min", "mixed") else None
    sets = build_sets(model, cfg, [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask")}
                                   for b in calibration] if calibration else None)
    dtype = {"float64": torch.float64, "float32": torch.float32, None: None}[cfg.dtype]
    common = {"format": KERNEL_FORMAT, "model": cfg.model.name, "task": cfg.task.name, "k": int(cfg.k),
              "seed": int(cfg.seed), "head": head, "dtype": str(cfg.dtype), "n_train": len(p_train.labels),
              "n_test": len(p_test.labels), "labels_train": list(p_train.labels), "labels_test": list(p_test.labels),
              "inputs": inputs_hash(weights_fingerprint(model), p_train.input_ids, p_train.positions, p_train.labels,
                                    p_test.input_ids, p_test.positions, p_test.labels, p_train.label_word_ids,
                                    OmegaConf.to_container(cfg.model, resolve=True))}
    metas = {name: {**common, "set": s.describe(), "set_hash": inputs_hash(s.describe())}
             for name, s in sets.items()}
    kernel_dir = Path(cfg.kernel_dir)
    stored: dict[str, dict] = {}
    reused: dict[str, bool] = {}
    missing = [n for n in sets if not _matches(kernel_dir / f"{n}.pt", metas[n])]
    t_kernel = time.perf_counter()
    fresh = {}
    if missing:
        print(f"[kernels] {len(missing)} of {len(sets)} parameter sets to compute ({', '.join(missing)}): "
              f"{len(b_train)} train and {len(b_test)} test batches", file=sys.stderr, flush=True)
        engine = KernelEngine(model, fn, {n: sets[n] for n in missing}, dtype=dtype)
        k_train = engine.kernels(_progress(b_train, "train x train"))
        k_test = engine.kernels(b_train, _progress(b_test, "train x test"))
        fresh = {n: {"train": unsort(k_train[n], o_train, o_train), "test": unsort(k_test[n], o_train, o_test)}
                 for n in missing}
    kernel_s = time.perf_counter() - t_kernel
    for name in sets:
        kernels, reused[name] = cached_kernels(kernel_dir / f"{name}.pt", metas[name], lambda n=name: fresh[n])
        stored[name] = kernels
    del model, fn
    return _metrics(cfg, sets, stored, reused, p_train.labels, p_test.labels, head, kernel_s,
                    time.perf_counter() - t_start)


def _matches(path: Path, meta: dict) -> bool:
    """Whether ``path`` holds kernels of exactly ``meta`` (cheap: its JSON side file)."""
    import json

    side = path.with_suffix(".json")
    try:
        return path.is_file() and json.loads(side.read_text()) == json.loads(json.dumps(meta, sort_keys=True,
                                                                                          default=str))
    except (OSError, ValueError):
        return False


def _metrics(cfg, sets, kernels, reused, y_train, y_test, head, kernel_s, wall_s) -> dict:
    from ..runs import METRICS_FORMAT
    from ..utils import git_info, package_versions

    results, rel, eig = {}, {}, {}
    for name in sets:
        acc = {}
        for solver in cfg.solvers:
            res = SOLVERS[solver](kernels[name]["train"], y_train, kernels[name]["test"], y_test)
            acc[solver] = {"accuracy": res.accuracy, "solver": res.solver, **{k: v for k, v in res.info.items()
                                                                             if k in ("C", "lambda", "binary")}}
        results[name] = acc
        ev = spectrum(kernels[name]["train"])
        eig[name] = ev[: cfg.eigenvalues].tolist() if cfg.eigenvalues else ev.tolist()
        if "full" in kernels and name != "full":
            rel[name] = {f"l{p}": relative_difference(kernels[name]["train"], kernels["full"]["train"], p)
                         for p in (1, 2)}
    full = sets.get("full")
    reported = {name: dict(zip(("method", "rank"), paper_method(name, cfg))) for name in sets}
    return {"kind": "ntk", "model": cfg.model.name, "task": cfg.task.name, "method": "ntk", "rank": int(cfg.rank),
            "seed": int(cfg.seed), "k": int(cfg.k), "head": head, "n_train": len(y_train), "n_test": len(y_test),
            "classes": int(kernels[next(iter(sets))]["train"].shape[1]), "solvers": list(cfg.solvers),
            "main_solver": list(cfg.solvers)[0], "sets": reported,
            "accuracy": results, "relative_difference": rel, "eigenvalues": eig,
            "params": {name: s.counts for name, s in sets.items()},
            "params_fraction": ({name: s.counts["total"] / full.counts["total"] for name, s in sets.items()}
                                if full is not None else None),
            "kernels_reused": reused, "kernel_dir": str(cfg.kernel_dir),
            "kernel_time_s": round(kernel_s, 2), "wall_time_s": round(wall_s, 2),
            "peak_memory_mb": round(peak_rss_mb(), 1), "peak_memory_kind": "cpu_rss_high_water",
            "metrics_format": METRICS_FORMAT, "git": git_info(), "versions": package_versions()}


def execute(cfg, multirun: bool = False) -> float | None:
    """Run ``cfg`` in ``cfg.output_dir`` unless complete (``force=true`` re-runs; kernels are reused while
    their inputs are unchanged); returns the first set's main-solver accuracy. A bad setting or input stops
    with one message and exit code 2 (in a sweep: that point's ``status.json`` says why, the others go on);
    a stop signal (SIGTERM, SIGUSR1, SIGUSR2) or Ctrl-C stops it at once: status ``preempted`` (Ctrl-C:
    ``interrupted``), exit code 128 + signal; the kernels already stored are reused by the next run
    (:func:`rocoft.rundir.run_recorded`)."""
    from ..checkpoint import StopSignals
    from ..rundir import RunClaim, check_run_dir, open_run_dir, run_recorded, write_status
    from ..utils import atomic_write_json

    run_dir = Path(cfg.output_dir)
    claim = RunClaim(run_dir)

    def skip_or_run() -> dict:
        validate(cfg)
        done = check_run_dir(run_dir, cfg)
        if done is None:
            done = claim.acquire(cfg)
        if done is not None:
            print(f"{run_dir} is complete: skipping (force=true re-runs it; its kernels are reused).")
            return done
        open_run_dir(run_dir, cfg)
        stop.stage = "the eNTK computation"
        metrics = compute(cfg, run_dir)
        atomic_write_json(run_dir / "metrics.json", metrics)
        write_status(run_dir, "complete")
        claim.outcome = "complete"
        print_summary(metrics, run_dir)
        return metrics

    with StopSignals(interrupt=True, immediate=True) as stop:  # nothing to checkpoint: a signal stops it at once
        metrics = run_recorded(cfg, claim, multirun, skip_or_run)
    return None if metrics is None else _main_value(metrics)


def _main_value(metrics: dict):
    first = next(iter(metrics.get("accuracy") or {}), None)
    return None if first is None else metrics["accuracy"][first][metrics["main_solver"]]["accuracy"]


def print_summary(m: dict, run_dir: Path) -> None:
    print(f"\n{m['model']} / {m['task']} / k={m['k']} / seed {m['seed']}: {m['n_train']} train, {m['n_test']} test")
    for name, acc in m["accuracy"].items():
        solvers = "  ".join(f"{s} {a['accuracy']:.4f}" for s, a in acc.items())
        rel = m["relative_difference"].get(name)
        rel = f"  rel. diff. p=1 {rel['l1']:.3f} p=2 {rel['l2']:.3f}" if rel else ""
        print(f"  {name:<22} {m['params'][name]['total']:>12,} params  {solvers}{rel}"
              f"{'  (kernels reused)' if m['kernels_reused'][name] else ''}")
    print(f"  time {m['wall_time_s']:.1f} s ({m['kernel_time_s']:.1f} s kernels), peak memory "
          f"{m['peak_memory_mb']:.0f} MB\n  results {run_dir}")
