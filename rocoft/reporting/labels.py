"""Display names and display order, read from the configs: ``label:`` in ``conf/method/<name>.yaml`` and
``conf/model/<name>.yaml``, ``kind:`` in ``conf/task/<name>.yaml``.

A run's resolved ``config.yaml`` carries its method and model labels (runs of this version); rows known only
from the paper's numbers, and older runs, look the label up in the conf YAML by name, else show the name.
Adding a method is one YAML: its ``label`` names it in every table and figure.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"

# Display order of the methods in the suite's tables and figures: the reference first, then the baselines,
# RoCoFT last (the paper's reading order). Only the order lives here; methods not listed come after these,
# by name.
METHOD_ORDER = ("full_ft", "bitfit", "ln_tuning", "ia3", "prompt_tuning", "prefix_tuning", "lora", "lorafa",
                "adalora", "loha", "lokr", "vera",
                "houlsby_adapter", "mam_adapter", "propetl_adapter", "propetl_prefix", "propetl_lora",
                "rocoft_row", "rocoft_col", "rocoft_random")


@cache
def conf_entry(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml`` as a plain dict (interpolations unresolved); {} when absent or unreadable."""
    path = CONF / group / f"{name}.yaml"
    try:
        import yaml
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - a missing or broken config only loses a label
        return {}
    return data if isinstance(data, dict) else {}


def label_of(group: str, name: str, label: str | None = None) -> str:
    """The display label of a method or model: ``label`` (from the run's config.yaml) when given, else the
    conf YAML's ``label:``, else the name itself."""
    return str(label or conf_entry(group, str(name)).get("label") or name)


def method_label(method: str, label: str | None = None) -> str:
    return label_of("method", method, label)


def model_label(model: str, label: str | None = None) -> str:
    return label_of("model", model, label)


def task_kind(task: str) -> str | None:
    """``kind:`` of ``conf/task/<task>.yaml`` (for run directories without a config.yaml)."""
    return conf_entry("task", str(task)).get("kind")


def method_pos(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def row_sort_key(method: str, rank, variant: str = "") -> tuple:
    """Rows of a suite table or figure: method order, then name, rank (none first), variant."""
    return (method_pos(method), method, -1 if rank is None else int(rank), variant)


def setting_label(method: str, rank, variant: str = "", label: str | None = None) -> str:
    """``LoRA r=8``, ``RoCoFT row r=4 (selection=min)``: one method setting in a figure legend or axis."""
    text = method_label(method, label)
    if rank is not None:
        text += f" r={rank}"
    if variant:
        text += f" ({variant})"
    return text
