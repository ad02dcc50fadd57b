"""rocoft.reporting: the suite's own tables, the figures, and scripts/tables.py end to end."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tables_tree import RT, build_tree, mean_std

from rocoft import reporting as rp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def frame(tree):
    return rp.scan_results(tree)[0]


def test_suite_table(frame):
    tables = {t.name: t for t in rp.render_suite_table(frame)}
    rt = tables["suite_rotten_tomatoes_minilm_l6"]
    h = rt.header
    assert h[:4] == ["Method", "Rank", "n", "Seeds"] and "Accuracy (test)" in h and "Accuracy (validation)" in h
    ft = next(r for r in rt.rows if r[0] == "Full FT")
    m, s, _ = mean_std(RT["full_ft"])
    assert ft[h.index("Accuracy (test)")] == f"**{m:.2f} ± {s:.2f}**"      # best main metric in bold
    assert ft[h.index("n")] == "3" and ft[h.index("Trainable")] == "22,713,986"
    row = next(r for r in rt.rows if r[0] == "RoCoFT row")
    m, s, _ = mean_std(RT["rocoft_row"])
    assert row[h.index("Accuracy (test)")] == f"{m:.2f} ± {s:.2f}" and row[h.index("Rank")] == "3"
    assert row[h.index("Added")] == "0"
    sel = tables["suite_sst2_roberta_base"]
    assert "Variant" in sel.header and any("selection=min" in r for r in sel.rows)
    assert r"\toprule" in sel.to_latex() and all(t.to_latex().isascii() for t in tables.values())
    assert "metrics x100 (fractions in metrics.json)" in rt.notes[0]
    assert "as stored (already x100)" in tables["suite_boolq_llama2_7b"].notes[0]    # a format-1 percent file
    # the CSV frame: one record per row, means in display units
    rec = rt.frame.set_index("method").loc["full_ft"]
    assert rec.accuracy_mean == pytest.approx(mean_std(RT["full_ft"])[0]) and rec.n == 3


def test_suite_overview(tmp_path):
    from tables_tree import write_run
    for task, base in (("sst2", 0.9), ("rte", 0.7)):
        for method, rank, bonus in (("lora", 8, 0.0), ("rocoft_row", 3, 0.01)):
            for seed in (0, 1):
                write_run(tmp_path, "tiny_encoder", task, method, rank, seed,
                          {"validation": {"accuracy": base + bonus + 0.001 * seed}},
                          trainable=1000 + (5 if task == "rte" else 0))
    (overview,) = rp.render_suite_overview(rp.scan_results(tmp_path)[0])
    assert overview.header == ["Method", "Rank", "rte: Accuracy (validation)", "sst2: Accuracy (validation)",
                               "Trainable", "w/o head", "Added"]
    lora, row = overview.rows
    assert lora[:2] == ["LoRA", "8"] and row[:2] == ["RoCoFT row", "3"]
    assert row[2] == "**71.05 ± 0.07 (n=2)**" and lora[3] == "90.05 ± 0.07 (n=2)"
    assert row[4] == "1,000–1,005" and row[5] == "100"


def test_plots_written_and_skipped(frame, tmp_path):
    paths, notes = rp.plot_memory_time(frame, tmp_path)
    paths += rp.plot_selection(frame, tmp_path)[0]
    paths += rp.plot_rank_ablation(frame, tmp_path)[0]
    names = {p.name for p in paths}
    assert {"fig2_memory_time_roberta_base.png", "fig4_selection_roberta_base.pdf",
            "rank_ablation_sst2_roberta_base.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths) and not notes
    empty, none = tmp_path / "empty", rp.make_frame([])
    for fn in (lambda: rp.plot_memory_time(none, empty), lambda: rp.plot_selection(none, empty),
               lambda: rp.plot_rank_ablation(none, empty)):
        written, skipped = fn()
        assert written == [] and "skipped" in skipped[0]


def test_cli_end_to_end(tree, tmp_path):
    """The real command line, as a user runs it."""
    def tables(*args):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tables.py"), *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    out = tmp_path / "tables"
    printed = tables("--results", str(tree), "--out", str(out), "--table", "1", "suite", "fig4")
    assert "### Table 1: GLUE, RoBERTa-base" in printed and "Suite: MiniLM-L6 on rotten_tomatoes" in printed
    assert "1 corrupt" in printed and "1 failed" in printed and "CUDA out of memory" in printed
    for name in ("table1.md", "table1.tex", "table1.csv", "suite.md", "suite.tex", "suite.csv", "report.md",
                 "issues.csv", "figures/fig4_selection_roberta_base.png"):
        assert (out / name).is_file(), name
    assert not (out / "table2.md").exists()
    assert len(pd.read_csv(out / "issues.csv")) == 4
    tables("--results", str(tmp_path / "none"), "--out", str(tmp_path / "t2"), "--quiet")
    assert (tmp_path / "t2" / "table12.csv").is_file()
