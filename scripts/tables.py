"""Render the paper's tables next to the suite's results, the suite's own table, and the figures.

Run from the repository root with the virtualenv active (``. .venv/bin/activate``):

    python scripts/tables.py                                   # everything: results/ -> results/tables/
    python scripts/tables.py --table 1 8 suite                 # Tables 1 and 8 and the suite table
    python scripts/tables.py --table figures --out /tmp/figs   # Figures 2, 3/6 (kernels), 4, 5 (spectra), ranks
    python scripts/tables.py --results results/ntk --table 4 5 fig3 fig5   # the kernel analysis (scripts/ntk.py)
    python scripts/tables.py --table 4 5 --as-model smollm2_135m=roberta_base  # another model in the paper's cells
    python scripts/tables.py --format md csv --split validation
    python scripts/tables.py --table 1 --rank lora=8 adalora=8   # which suite rank a rank-less paper row uses

Scans ``--results`` recursively for run directories (any directory with ``metrics.json``, ``status.json``
or Hydra's ``.hydra/``); unfinished (no metrics.json, including folders killed at start-up with only
``.hydra/`` and ``train.log``), failed (status.json "failed", no metrics.json) and corrupt (unreadable
metrics.json) directories are listed and skipped; a run with metrics.json whose status.json says failed is
used, listed with a warning and its seed marked †. Seeds of one (model, task, method, rank, variant) are
aggregated as mean ± sample std (n); the variant names the settings that differ between runs' config.yaml
(e.g. ``train.lr=0.001`` for a ``.../lr${train.lr}/seed${seed}`` layout), so only the same settings and seed
twice is a duplicate. A seed whose score is NaN is left out of the mean and n, and the cell says so:
``(n=2; 1 NaN)``. Each paper table keeps the paper's rows and columns, each cell showing
``paper vs suite mean ± std (n); Δ suite - paper`` (``-`` where the suite has not run the cell).

Writes under ``--out``: ``table<N>.md/.tex/.csv`` (N in 1 2 4 5 6 7 8 11 12 13), ``suite.md/.tex/.csv``,
``figures/*.png|pdf``, ``report.md`` (all the Markdown, also printed) and ``issues.csv``. Paper numbers come
from ``rocoft/paper_numbers.csv`` (one row per published number).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rocoft.reporting import PAPER_TABLES, build_report  # noqa: E402

CHOICES = ["all", "suite", "figures", "fig2", "fig3", "fig4", "fig5", "ranks"] + [str(n) for n in PAPER_TABLES]
FORMATS = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "csv": "csv"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="results tree to scan (default: results)")
    ap.add_argument("--table", nargs="+", default=["all"], metavar="T",
                    help=f"what to render: {' '.join(CHOICES)} (default: all)")
    ap.add_argument("--out", default=None, help="output folder (default: <results>/tables)")
    ap.add_argument("--format", nargs="+", default=["md", "latex", "csv"], metavar="F",
                    help="md latex csv (default: all three)")
    ap.add_argument("--split", default=None,
                    help="evaluation split to show (default: test, else validation_matched, else validation)")
    ap.add_argument("--paper", default=None, help="paper numbers CSV (default: rocoft/paper_numbers.csv)")
    ap.add_argument("--rank", nargs="+", default=[], metavar="METHOD=R",
                    help="suite rank to compare with paper rows that print no rank, e.g. lora=8 adalora=8 "
                         "(default: the rank with the most runs)")
    ap.add_argument("--as-model", nargs="+", default=[], metavar="SUITE=PAPER",
                    help="in the paper tables, show the suite's runs of model SUITE in the cells of the paper's "
                         "model PAPER, e.g. smollm2_135m=roberta_base (the notes say so)")
    ap.add_argument("--no-plots", action="store_true", help="skip the figures")
    ap.add_argument("--quiet", action="store_true", help="do not print the Markdown")
    args = ap.parse_args(argv)

    bad = [t for t in args.table if t not in CHOICES]
    if bad:
        ap.error(f"unknown --table {bad}; choose from {' '.join(CHOICES)}")
    bad = [f for f in args.format if f.lower() not in FORMATS]
    if bad:
        ap.error(f"unknown --format {bad}; choose from md latex csv")
    ranks = {}
    for item in args.rank:
        method, _, r = item.partition("=")
        if not r.lstrip("-").isdigit():
            ap.error(f"--rank wants METHOD=R, got {item!r}")
        ranks[method] = int(r)
    as_model = dict(item.partition("=")[::2] for item in args.as_model)
    if any(not k or not v for k, v in as_model.items()):
        ap.error(f"--as-model wants SUITE=PAPER model names, got {args.as_model}")
    formats = tuple(dict.fromkeys(FORMATS[f.lower()] for f in args.format))
    out = Path(args.out) if args.out else Path(args.results) / "tables"

    paper = None
    if args.paper:
        from rocoft.reporting import load_paper_numbers
        paper = load_paper_numbers(args.paper)
    report = build_report(args.results, out, tables=args.table, formats=formats, split=args.split,
                          paper=paper, plots=not args.no_plots, ranks=ranks, as_model=as_model)
    if not args.quiet:
        print(report["markdown"])
    figures = [p for p in report["written"] if p.suffix == ".png"]
    print(f"{len(report['runs'])} runs, {len(report['issues'])} run directories skipped; "
          f"wrote {len(report['written'])} files ({len(figures)} figures) under {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
