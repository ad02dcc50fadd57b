"""Scanning a results tree into one tidy frame: one row per run x split x metric.

:func:`scan_results` walks a results tree (any directory holding ``metrics.json`` or ``status.json``, a
started run's ``config.yaml``, or Hydra's ``.hydra/`` folder) and returns ``(frame, issues)``: the finished
runs as a tidy :class:`pandas.DataFrame` (columns :data:`COLUMNS`) and the directories it could not use
(unfinished, failed, corrupt, duplicate) or used with a warning, never raising on a bad run directory.

Cells: runs of one (model, task, method, rank) whose config.yaml differ in a setting that changes what a run
computes (every key but the seed and :data:`rocoft.utils.NEUTRAL`, as the run-directory check compares them)
are told apart by ``variant``, e.g. ``train.lr=0.001`` for the ``.../lr${train.lr}/seed${seed}`` layout;
only the same settings and seed twice is a duplicate.

Units: ``value`` is the stored unit of ``metrics_format`` 2 (every score a fraction, see
:mod:`rocoft.metrics`); ``shown`` is the display unit (scores x100, the keys in ``rocoft.metrics.UNSCALED``
and the run-level numbers as they are). A metrics.json without ``metrics_format`` is format 1, written by the
previous version: there SQuAD, ROUGE and LLM-Adapters scores were percent; :func:`split_rows` converts them.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rocoft.metrics import UNSCALED
from rocoft.utils import NEUTRAL, flat_dict

from .labels import method_label, method_pos, model_label, task_kind

KEYS = ["model", "task", "method", "rank", "variant"]          # one table cell = these + a metric
COLUMNS = ["run", *KEYS, "seed", "selection", "status", "kind", "format", "main_metric", "method_label",
           "model_label", "memory_kind", "mtime", "split", "metric", "stored", "value", "shown"]

# Run-level numbers (split ""), in their own units: parameter counts, millions, seconds, MB.
RUN_FIELDS = {
    "trainable_params": lambda m: m["params"]["trainable"] / 1e6,          # millions, with the task head
    "trainable_without_head_m": lambda m: m["params"]["trainable_without_head"] / 1e6,
    "additional_m": lambda m: m["params"]["additional"] / 1e6,
    "trainable": lambda m: m["params"]["trainable"],
    "trainable_without_head": lambda m: m["params"]["trainable_without_head"],
    "additional": lambda m: m["params"]["additional"],
    "train_time_s": lambda m: m["train_time_s"],
    "wall_time_s": lambda m: m["wall_time_s"],
    "peak_memory_mb": lambda m: m["peak_memory_mb"],
}
# Format 1 (no "metrics_format"): the task kinds whose scores were stored in percent; without a kind, the
# metric names that only these kinds write.
FORMAT1_PERCENT_KINDS = {"question_answering", "summarization", "instruction"}
FORMAT1_PERCENT_NAMES = ("exact_match", "rouge", "loglik_acc", "HasAns_", "NoAns_")
REQUIRED_KEYS = ("model", "task", "method", "seed")
SEED_KEYS = ("seed", "task.kshot_seed")  # follow the run seed (prompt tasks' k-shot split): not a setting
# inside a run: never runs (nor is any hidden folder: .hydra, or a run put aside by a fresh start, .previous_run
# and .replaced_run, which keep the metrics.json of the run they replaced)
SKIP_DIRS = {"adapter", "merged", "checkpoints", "__pycache__"}


@dataclass
class Issue:
    """A run directory that is not (fully) used: unfinished, failed, corrupt, duplicate, or used with a
    warning (status.json unreadable, or "failed" after metrics.json was written)."""
    path: Path
    status: str
    detail: str = ""

    def line(self, root: Path | None = None) -> str:
        try:
            shown = self.path.relative_to(root) if root is not None else self.path
        except ValueError:
            shown = self.path
        return f"{shown}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def eval_splits(metrics: dict) -> list[str]:
    """The evaluated splits of a metrics.json, in evaluation order."""
    splits = [s for s in (metrics.get("eval_splits") or []) if isinstance(metrics.get(s), dict)]
    return splits or [s for s in ("test", "validation_matched", "validation") if isinstance(metrics.get(s), dict)]


def stored_in_percent(metrics: dict, kind: str | None) -> bool:
    """Whether a metrics.json holds its scores in percent: format 1 (no ``metrics_format``) of a QA,
    summarization or LLM-Adapters task. The kind comes from the run's config.yaml, else from
    ``conf/task/<task>.yaml``, else from the metric names."""
    if int(metrics.get("metrics_format") or 1) >= 2:
        return False
    kind = kind or task_kind(metrics.get("task"))
    if kind is not None:
        return kind in FORMAT1_PERCENT_KINDS
    return any(str(k).startswith(FORMAT1_PERCENT_NAMES) for s in eval_splits(metrics) for k in metrics[s])


def split_rows(metrics: dict, kind: str | None = None) -> list[tuple]:
    """``(split, metric, stored, value, shown)`` for every numeric score of every evaluated split, and
    ``("", field, "", value, value)`` for the run-level numbers of :data:`RUN_FIELDS`.

    ``value`` is in the unit of metrics_format 2 (fractions), ``shown`` in display units (x100); a format-1
    percent score keeps its printed number as ``shown`` (no round trip through a division). ``stored``
    names the unit the file used: "fraction", "percent" or "" (not a score). A score that is NaN, infinite
    or null gets a NaN row, so that the cell counts that seed as one without a number."""
    percent = stored_in_percent(metrics, kind)
    rows = []
    for split in eval_splits(metrics):
        for name, v in metrics[split].items():
            if v is not None and not isinstance(v, (int, float)):
                continue
            v = math.nan if v is None else _finite(v)
            if name in UNSCALED:
                rows.append((split, name, "", v, v))
            elif percent:
                rows.append((split, name, "percent", v / 100.0, v))
            else:
                rows.append((split, name, "fraction", v, 100.0 * v))
    for name, get in RUN_FIELDS.items():
        try:
            v = _finite(float(get(metrics)))
        except (KeyError, TypeError, ValueError):
            continue
        rows.append(("", name, "", v, v))
    return rows


def _finite(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


def run_variant(method: str, config: dict | None, path: Path) -> tuple[str, str | None]:
    """(variant, selection): which non-default flavour of a method a run is. RoCoFT row/column runs whose
    ``method.selection`` differs from the task's default (``task.rocoft.selection``, else ``first``) get
    ``selection=<s>``; random-entry runs get ``p=<p>``; everything else is the default ("")."""
    mcfg = (config or {}).get("method") or {}
    tcfg = (config or {}).get("task") or {}
    if method == "rocoft_random":
        if "p" in mcfg:
            return _fmt_p(mcfg["p"]), mcfg.get("selection")
        m = re.search(r"_p([0-9.eE+-]+)$", path.parent.name)
        return (_fmt_p(m.group(1)) if m else "p=?"), None
    if method in ("rocoft_row", "rocoft_col"):
        selection = mcfg.get("selection")
        default = ((tcfg.get("rocoft") or {}).get("selection")) or "first"
        if selection is None or selection == default:
            return "", selection
        return f"selection={selection}", selection
    return "", None


def _fmt_p(p) -> str:
    try:
        return f"p={float(p):g}"
    except (TypeError, ValueError):
        return f"p={p}"


def scan_results(root: str | os.PathLike) -> tuple[pd.DataFrame, list[Issue]]:
    """The finished runs under ``root`` as one tidy frame, and the run directories not used.

    A directory with a valid ``metrics.json`` is a run; the others are reported (never raised): no
    metrics.json = unfinished (a folder holding only ``.hydra/`` and ``train.log``: killed at start-up),
    status failed = failed (with its error), unreadable metrics.json = corrupt. A run with metrics.json whose
    status.json says failed (an error after metrics.json, written last, e.g. a tracker failing at the end)
    is used, as train.py treats it as complete, with status "failed" and a warning. Runs repeating a
    (model, task, method, rank, variant, seed), the variant including the settings that differ (see the
    module doc), keep the newest ``metrics.json``; the older ones are reported as duplicates. Rows are
    sorted by model, task, method order, rank, variant, seed."""
    root = Path(root)
    runs, issues = [], []
    if not root.is_dir():
        return make_frame([]), [Issue(root, "missing", "results directory not found")]
    for dirpath, dirnames, filenames in os.walk(root):
        names = set(filenames)
        hydra = ".hydra" in dirnames
        started = "config.yaml" in names and (hydra or {"train.log", "log.jsonl"} & names)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if "metrics.json" in names or "status.json" in names or started:
            run = _read_run(Path(dirpath), names, issues)
            if run is not None:
                runs += ntk_runs(run) if run["ntk"] else [run]
        elif hydra:
            _killed_at_startup(Path(dirpath), issues)
    _name_swept_settings(runs)
    kept = []
    for group in _groups(runs):
        group.sort(key=lambda r: r["mtime"])
        kept.append(group[-1])
        for r in group[:-1]:
            issues.append(Issue(r["path"], "duplicate",
                                f"same settings and seed as {group[-1]['path']}; newer one used"))
    kept.sort(key=lambda r: (r["model"], r["task"], method_pos(r["method"]), r["rank"] or 0, r["variant"],
                             str(r["seed"])))
    rows = [{**{k: r[k] for k in COLUMNS[:-5]}, "split": s, "metric": m, "stored": u, "value": v, "shown": d}
            for r in kept for s, m, u, v, d in (r["rows"] or [("", "", "", math.nan, math.nan)])]
    return make_frame(rows), issues


def make_frame(rows: list[dict]) -> pd.DataFrame:
    """The tidy frame from row dicts (keys :data:`COLUMNS`): text and mixed columns stay Python objects
    (None stays None, seeds stay as written), ``rank`` is a nullable integer, numbers are floats."""
    dtypes = {"rank": "Int64", "format": "int64", "mtime": "float64", "value": "float64", "shown": "float64"}
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=dtypes.get(c, object)) for c in COLUMNS})


def run_settings(config: dict) -> dict:
    """The settings of a resolved config.yaml that change what a run computes: its flattened keys but the
    seed and :data:`rocoft.utils.NEUTRAL` (the keys the run-directory check also ignores)."""
    neutral = lambda k: any(k == n or k.startswith(n + ".") for n in NEUTRAL)  # noqa: E731
    return {k: v for k, v in flat_dict(config).items() if k not in SEED_KEYS and not neutral(k)}


def _name_swept_settings(runs: list[dict]) -> None:
    """Append the settings that differ inside one (model, task, method, rank, variant) to each run's variant,
    ``train.lr=0.001`` (keys in every config.yaml of the group, in key order; a run without config.yaml keeps
    its variant)."""
    by_cell: dict[tuple, list] = {}
    for r in runs:
        if r["settings"] is not None:
            by_cell.setdefault(tuple(r[k] for k in KEYS), []).append(r)
    for group in by_cell.values():
        shared = set.intersection(*(set(r["settings"]) for r in group))
        swept = sorted(k for k in shared if len({repr(r["settings"][k]) for r in group}) > 1)
        for r in group if swept else []:
            named = ", ".join(f"{k}={r['settings'][k]}" for k in swept)   # str(float): exact, shortest
            r["variant"] = f"{r['variant']}, {named}" if r["variant"] else named


def _killed_at_startup(path: Path, issues: list) -> None:
    """A Hydra job folder without a run's files (no config.yaml, status.json, metrics.json): a process killed
    while it started, listed as unfinished; or, in a multirun whose ``output_dir`` is not Hydra's job folder
    (``.../lr${train.lr}/seed${seed}``), the folder Hydra made next to the run: nothing to list when that run
    directory exists, else its run was killed before it created it."""
    target = _hydra_output_dir(path)
    if target is None or target == path.resolve():
        issues.append(Issue(path, "unfinished", "killed at start-up: only .hydra/ and train.log, no config.yaml "
                                                "or status.json"))
    elif not target.exists():
        issues.append(Issue(path, "unfinished", f"killed at start-up: Hydra's job folder of run directory "
                                                f"{target}, which was never created"))


def _hydra_output_dir(path: Path) -> Path | None:
    """``output_dir`` of ``<path>/.hydra/config.yaml`` resolved (relative to ``hydra.runtime.cwd``), or None."""
    try:
        from omegaconf import OmegaConf
        out = OmegaConf.load(path / ".hydra" / "config.yaml").output_dir
        cwd = OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra.runtime.cwd
        return (Path(cwd) / str(out)).resolve()
    except Exception:  # noqa: BLE001 - no, or an unresolvable, output_dir: the folder itself is the run
        return None


def _groups(runs: list[dict]) -> list[list[dict]]:
    by_seed: dict[tuple, list] = {}
    for r in runs:
        by_seed.setdefault((*(r[k] for k in KEYS), r["seed"]), []).append(r)
    return list(by_seed.values())


def _read_run(path: Path, names: set, issues: list) -> dict | None:
    """One run directory: its run-level record with its metric rows, or None (an issue is recorded)."""
    status = None
    if "status.json" in names:
        try:
            status = _read_json(path / "status.json")
            if not isinstance(status, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            status = None
            if "metrics.json" not in names:
                issues.append(Issue(path, "corrupt", f"status.json unreadable: {e}"))
                return None
            issues.append(Issue(path, "warning", f"status.json unreadable, metrics.json used: {e}"))
    status = status or {}
    state = status.get("status")
    error = _shorten(str(status.get("error") or "no error message"))
    if state == "failed" and "metrics.json" not in names:
        issues.append(Issue(path, "failed", error))
        return None
    if "metrics.json" not in names:
        detail = f"no metrics.json; status {state or 'unknown'}"
        if status.get("step") is not None:
            detail += f" at step {status['step']}"
        if status.get("time"):
            detail += f" since {status['time']}"
        issues.append(Issue(path, "unfinished", detail))
        return None
    try:
        metrics = _read_json(path / "metrics.json")
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in metrics]
        if missing:
            raise ValueError(f"missing keys {missing}")
    except (OSError, ValueError) as e:
        issues.append(Issue(path, "corrupt", f"metrics.json: {_shorten(str(e))}"))
        return None
    if state == "failed":
        issues.append(Issue(path, "warning", f"status.json says failed after metrics.json was written ({error}); "
                                             "its numbers are used, the seed marked † in the suite table"))
    raw_config = _read_yaml(path / "config.yaml") if "config.yaml" in names else None
    config = raw_config or {}
    method = str(metrics["method"])
    variant, selection = run_variant(method, config, path)
    try:
        rank = None if metrics.get("rank") is None else int(metrics["rank"])
    except (TypeError, ValueError):
        rank = None
    kind = (config.get("task") or {}).get("kind")
    rows = split_rows(metrics, kind)
    task = str(metrics["task"])
    if kind == "prompt":  # the paper's Table 4 rows: task without "_prompt", variant k=<k>, few_shot_accuracy
        task, variant = prompt_task_name(task), ", ".join(v for v in (f"k={(config.get('task') or {}).get('k')}",
                                                                     variant) if v)
        rows += [(s, "few_shot_accuracy", u, v, d) for s, m, u, v, d in rows if s == "test" and m == "accuracy"]
    return {"path": path, "run": str(path), "model": str(metrics["model"]), "task": task,
            "method": method, "rank": rank, "variant": variant, "seed": metrics.get("seed"),
            "selection": selection, "status": state or "complete", "kind": kind,
            "format": int(metrics.get("metrics_format") or 1), "main_metric": metrics.get("main_metric"),
            "method_label": method_label(method, (config.get("method") or {}).get("label")),
            "model_label": model_label(str(metrics["model"]), (config.get("model") or {}).get("label")),
            "memory_kind": metrics.get("peak_memory_kind"), "mtime": (path / "metrics.json").stat().st_mtime,
            "rows": rows, "ntk": metrics if metrics.get("kind") == "ntk" else None,
            "settings": None if raw_config is None else run_settings(raw_config)}


def prompt_task_name(task: str) -> str:
    """The paper's name of a prompt-based task (``mr_prompt`` -> ``mr``)."""
    return task[: -len("_prompt")] if task.endswith("_prompt") else task


def ntk_runs(run: dict) -> list[dict]:
    """An eNTK run (``scripts/ntk.py``: one metrics.json for several parameter sets) as one run per set, named
    as the paper's rows: method ``ntk_full``, ``ntk_rocoft_row`` / ``ntk_rocoft_col`` (rank r), ``ntk_lora``
    (its rank), ``ntk_bitfit``, ``ntk_group_<g>``; variant ``k=<k>``. Rows: ``few_shot_accuracy`` on test (the
    first solver; the others as ``few_shot_accuracy_<solver>``), and run-level ``kernel_rel_diff_l1`` / ``_l2``
    (to the full kernel, train kernels) and ``kernel_params`` (entries in the set)."""
    m = run["ntk"]
    out = []
    for name, reported in (m.get("sets") or {}).items():
        rows = []
        for i, (solver, res) in enumerate((m.get("accuracy") or {}).get(name, {}).items()):
            metric = "few_shot_accuracy" if i == 0 else f"few_shot_accuracy_{solver}"
            v = math.nan if res.get("accuracy") is None else _finite(res["accuracy"])
            rows.append(("test", metric, "fraction", v, 100.0 * v))
        for p, v in ((m.get("relative_difference") or {}).get(name) or {}).items():
            rows.append(("", f"kernel_rel_diff_{p}", "", _finite(v), _finite(v)))
        count = ((m.get("params") or {}).get(name) or {}).get("total")
        if count is not None:
            rows.append(("", "kernel_params", "", float(count), float(count)))
        for field in ("wall_time_s", "peak_memory_mb"):
            if isinstance(m.get(field), (int, float)):
                rows.append(("", field, "", _finite(m[field]), _finite(m[field])))
        out.append({**run, "run": f"{run['run']}#{name}", "task": prompt_task_name(str(m["task"])),
                    "method": reported["method"], "rank": reported.get("rank"), "variant": f"k={m.get('k')}",
                    "method_label": method_label(reported["method"]), "rows": rows, "kind": "ntk"})
    return out


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_yaml(path: Path) -> dict | None:
    try:
        import yaml
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        return data if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - a broken config only loses the variant information
        return None


def _shorten(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."
