"""Run peft's own conformance battery (``tests/test_custom_models.py``) against RoCoFT.

peft checks every tuner with one shared battery: save/load round trips, merging, disabling,
several adapters, dtype handling, ``low_cpu_mem_usage`` loading, ... This script runs it the way
peft adds a tuner to it, without committing any of peft's code:

1. download the sdist of the installed peft version from the package registry
   (``pip download --no-deps --no-binary :all: peft==<version>``), into ``--workdir``;
2. unpack ``tests/test_custom_models.py`` and what it imports (``testing_common.py``,
   ``testing_utils.py``), stub ``diffusers`` (only imported there), and add the RoCoFT cases
   below at the top of ``TEST_CASES`` and ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``;
3. run pytest on the RoCoFT cases only (``-k RoCoFT``) and summarise: passed / failed / skipped,
   failures grouped by cause (``<workdir>/summary.md`` and ``summary.json``).

Usage::

    python scripts/peft_battery.py [--workdir /tmp/peft_battery] [-k EXTRA_FILTER]

It takes a few minutes on a CPU. The README lists the count and every deliberate deviation.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path

TEST_FILES = ("test_custom_models.py", "testing_common.py", "testing_utils.py")

# (test name, model id, config kwargs) on peft's MLP (lin0: 10 -> 20, lin1: 20 -> 2)
ROCOFT_CASES = [
    ("Vanilla MLP 1 RoCoFT rows", {"axis": "row", "rank": 2, "target_modules": ["lin0"]}),
    ("Vanilla MLP 2 RoCoFT rows regex", {"axis": "row", "rank": 2, "target_modules": "lin0"}),
    ("Vanilla MLP 3 RoCoFT columns", {"axis": "column", "rank": 2, "target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 4 RoCoFT entries", {"axis": "entry", "p": 0.3, "target_modules": ["lin0"]}),
    ("Vanilla MLP 5 RoCoFT modules_to_save",
     {"axis": "row", "rank": 2, "target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 RoCoFT bias", {"axis": "row", "rank": 2, "target_modules": ["lin0"], "bias": "rocoft_only"}),
    ("Vanilla MLP 7 RoCoFT random rows",
     {"axis": "row", "rank": 2, "selection": "random", "seed": 1, "target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 8 RoCoFT random columns",
     {"axis": "column", "rank": 3, "selection": "random", "seed": 2, "target_modules": ["lin0"]}),
]
MULTI_CASES = [
    ("RoCoFT Same", {"axis": "row", "rank": 2, "target_modules": ["lin0"], "init_weights": False},
     {"axis": "row", "rank": 2, "target_modules": ["lin0"], "init_weights": False, "seed": 1}),
    ("RoCoFT Different", {"axis": "column", "rank": 2, "target_modules": ["lin0"], "init_weights": False},
     {"axis": "row", "rank": 1, "target_modules": ["lin1"], "init_weights": False}),
]

CONFTEST = '''"""Written by scripts/peft_battery.py: stub diffusers (only imported), register RoCoFT, stay offline."""
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "diffusers" not in sys.modules:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        stub = types.ModuleType("diffusers")
        stub.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
        sys.modules["diffusers"] = stub
import rocoft  # noqa: E402,F401  registers "rocoft" with peft
'''
PYTEST_INI = "[pytest]\nmarkers =\n    single_gpu_tests\n    multi_gpu_tests\n    regression\n    bitsandbytes\n"


def insert_cases(source: str) -> str:
    """``test_custom_models.py`` with the RoCoFT cases first in ``TEST_CASES`` and in
    ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES`` (the lists peft's own tuners are added to)."""
    cases = "".join(f"    ({name!r}, 'MLP', RoCoFTConfig, {kwargs!r}),\n" for name, kwargs in ROCOFT_CASES)
    multi = "".join(f"    ({name!r}, 'rocoft', RoCoFTConfig, {a!r}, {b!r}),\n" for name, a, b in MULTI_CASES)
    out = []
    found = set()
    for line in source.splitlines(keepends=True):
        out.append(line)
        if line.startswith("TEST_CASES = ["):
            out.append(cases)
            found.add("TEST_CASES")
        elif line.startswith("MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = ["):
            out.append(multi)
            found.add("MULTI")
        elif line.startswith("from peft import (") and "import" not in found:
            out.insert(len(out) - 1, "from rocoft import RoCoFTConfig\n")
            found.add("import")
    if found != {"TEST_CASES", "MULTI", "import"}:
        raise SystemExit(f"peft's test_custom_models.py changed shape: found only {sorted(found)}")
    return "".join(out)


def cause(message: str) -> str:
    """One failure's cause: the exception line, with numbers, addresses and quoted values blurred."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    head = next((ln for ln in lines if re.match(r"^(E\s+)?[A-Za-z_.]*(Error|Exception|assert)", ln)), lines[0] if lines
                else "unknown")
    head = re.sub(r"^E\s+", "", head)
    head = re.sub(r"0x[0-9a-f]+", "0x…", head)
    head = re.sub(r"tensor\(.*", "tensor(…)", head)
    head = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", head)
    return head[:160]


def summarise(junit_xml: Path) -> dict:
    """Counts and failures grouped by cause, from pytest's JUnit XML."""
    outcomes, groups = Counter(), defaultdict(list)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = case.get("name", "")
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failure is not None:
            outcomes["failed"] += 1
            groups[cause(failure.get("message", "") or failure.text or "")].append(name)
        elif case.find("skipped") is not None:
            outcomes["skipped"] += 1
        else:
            outcomes["passed"] += 1
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return {"total": sum(outcomes.values()), **{k: outcomes[k] for k in ("passed", "failed", "skipped")},
            "failures_by_cause": [{"cause": c, "count": len(t), "tests": sorted(t)} for c, t in ordered]}


def render(summary: dict, peft_version: str) -> str:
    lines = [f"# peft {peft_version} battery (tests/test_custom_models.py) against RoCoFT", "",
             f"{summary['passed']} of {summary['total']} pass, {summary['failed']} fail, "
             f"{summary['skipped']} skipped.", ""]
    for group in summary["failures_by_cause"]:
        lines.append(f"- {group['count']} x `{group['cause']}`")
        lines += [f"  - {t}" for t in group["tests"]]
    return "\n".join(lines) + "\n"


def prepare(workdir: Path, peft_version: str) -> Path:
    """Download + unpack peft's sdist tests into ``workdir/battery/tests`` with the RoCoFT cases added."""
    sdist_dir = workdir / "sdist"
    archives = sorted(sdist_dir.glob(f"peft-{peft_version}.tar.gz"))
    if not archives:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"peft=={peft_version}", "-d", str(sdist_dir)], check=True)
        archives = sorted(sdist_dir.glob(f"peft-{peft_version}.tar.gz"))
    tests = workdir / "battery" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0]) as tar:
        for name in TEST_FILES:
            member = tar.extractfile(f"peft-{peft_version}/tests/{name}")
            text = member.read().decode()
            (tests / name).write_text(insert_cases(text) if name == "test_custom_models.py" else text)
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text(CONFTEST)
    (workdir / "battery" / "pytest.ini").write_text(PYTEST_INI)
    return workdir / "battery"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None,
                    help="where the sdist, the tests and the summary go (default: a temp dir)")
    ap.add_argument("-k", dest="extra", default=None, help="an extra pytest -k filter, and-ed with 'RoCoFT'")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peft_battery_")).resolve()
    peft_version = version("peft")
    root = prepare(workdir, peft_version)
    junit = workdir / "junit.xml"
    select = "RoCoFT" + (f" and ({args.extra})" if args.extra else "")
    cmd = [sys.executable, "-m", "pytest", "tests/test_custom_models.py", "-k", select, "-q", "-p", "no:cacheprovider",
           "-c", str(root / "pytest.ini"), "--rootdir", str(root), f"--junitxml={junit}", "-W", "ignore"]
    proc = subprocess.run(cmd, cwd=root)
    if not junit.exists():
        print(f"pytest wrote no results (exit code {proc.returncode})", file=sys.stderr)
        return 2
    summary = summarise(junit)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    text = render(summary, peft_version)
    (workdir / "summary.md").write_text(text)
    print(text)
    print(f"written: {workdir / 'summary.md'}, {workdir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
