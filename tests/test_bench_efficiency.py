"""The efficiency benchmark's command line (rocoft.bench.cli, behind scripts/bench_efficiency.py) on the tiny
shape, CPU: files, records, exact parameter counts, ratios, option checks."""

import json
from pathlib import Path

import pytest

from rocoft.bench.cli import build_parser, main, resolve
from rocoft.bench.shapes import SHAPES

VARIANTS = ["frozen_floor", "rocoft_row_r1", "rocoft_col_r1", "lora_r8", "torchcat_row_r3", "full_ft"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = main(["--shape", "tiny", "--device", "cpu", "--warmup", "1", "--repeats", "2",
                   "--variants", ",".join(VARIANTS), "--out", str(out), "--no-progress"])
    return result, out


def expected_counts(cfg):
    """Trainable parameters of each variant, from the tiny RoBERTa shape alone."""
    h, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    v, p, t, n_labels = cfg["vocab_size"], cfg["max_position_embeddings"], cfg["type_vocab_size"], cfg["num_labels"]
    # targeted per layer: q, k, v, attention.output (h x h), intermediate (f x h), output (h x f).
    # r rows: r * d_in each -> r * (4h + h + f); r columns: r * d_out each -> r * (4h + f + h).
    slices = lambda r: n_layers * r * (5 * h + f)  # noqa: E731
    lora = lambda r: n_layers * r * (4 * 2 * h + 2 * (h + f))  # noqa: E731  (A: r x d_in, B: d_out x r)
    embeddings = (v + p + t) * h + 2 * h
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * (2 * h)
    head = (h * h + h) + (h * n_labels + n_labels)
    return {"frozen_floor": 0, "rocoft_row_r1": slices(1), "rocoft_col_r1": slices(1), "lora_r8": lora(8),
            "torchcat_row_r3": slices(3), "full_ft": embeddings + n_layers * layer + head}


def test_files_and_records(run):
    result, out = run
    json_path, md_path = Path(result["json"]), Path(result["markdown"])
    assert json_path.exists() and md_path.exists()
    assert json_path.parent == out and md_path.with_suffix(".json") == json_path
    records = json.loads(json_path.read_text())
    assert [r["variant"] for r in records] == VARIANTS  # floor first, requested order otherwise
    md = md_path.read_text()
    for r in records:
        assert r["shape"] == "tiny" and r["device"] == "cpu" and r["dtype"] == "float32"
        assert set(r["versions"]) >= {"torch", "transformers", "peft"}
        assert r["memory_measure"] == "cpu_live_tensors+profiled_step_peak"
        assert f"| {r['variant']} |" in md
    assert md.strip() in result["table"]


def test_trainable_counts(run):
    records = {r["variant"]: r for r in run[0]["records"]}
    expected = expected_counts(SHAPES["tiny"].config)
    assert expected["rocoft_row_r1"] == 2 * (5 * 64 + 256)  # sanity of the formula on the tiny shape
    for name, n in expected.items():
        assert records[name]["trainable_params"] == n, name
    assert records["full_ft"]["total_params"] == expected["full_ft"]
    assert records["full_ft"]["trainable_pct"] == pytest.approx(100.0)


def test_ratios_and_times(run):
    records = run[0]["records"]
    floor = records[0]
    assert floor["variant"] == "frozen_floor"
    assert floor["ratio_time_vs_floor"] == 1.0 and floor["ratio_mem_vs_floor"] == 1.0
    assert floor["ratio_min_time_vs_floor"] == 1.0
    for r in records:
        assert len(r["step_ms_all"]) == 2 and all(t > 0 for t in r["step_ms_all"])
        assert r["step_ms"] > 0 and r["peak_mb"] > 0 and r["peak_mb"] >= r["static_mb"] > 0
        assert r["ratio_time_vs_floor"] == pytest.approx(r["step_ms"] / floor["step_ms"])
        assert r["ratio_mem_vs_floor"] == pytest.approx(r["peak_mb"] / floor["peak_mb"])
        assert r["final_loss"] == r["final_loss"]  # not NaN


def test_floor_added_and_bad_options(tmp_path, capsys):
    _, settings, variants = resolve(*_parsed(["--shape", "tiny", "--device", "cpu",
                                              "--variants", "rocoft_col_r3,lora_r4"]))
    assert [v.name for v in variants] == ["frozen_floor", "rocoft_col_r3", "lora_r4"]
    assert (settings[0].batch, settings[0].seq_len, settings[0].warmup, settings[0].repeats) == (4, 32, 2, 5)
    bad = [(["--shape", "llama2-7b", "--device", "cpu"], "GPU only"),
           (["--shape", "tiny", "--device", "cpu", "--variants", "rocoft_diag_r3"], "unknown variant"),
           (["--shape", "nope", "--device", "cpu"], "unknown --shape"),
           (["--shape", "tiny", "--device", "cpu", "--repeats", "0"], "--repeats must be >= 1"),
           (["--shape", "tiny", "--device", "cpu", "--dtype", "bfloat16", "--autocast"], "--autocast"),
           (["--shape", "tiny", "--device", "cpu", "--seq-len", "4096"], "exceeds")]
    for argv, message in bad:
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(tmp_path)])
        assert message in capsys.readouterr().err, argv


def _parsed(argv):
    parser = build_parser()
    return parser.parse_args(argv), parser
