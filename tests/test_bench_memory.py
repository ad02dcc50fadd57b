"""rocoft.bench's memory measures: the FakeTensorMode estimate against a real profiled CPU step, the
estimate's command line, LiveStorageBytes on real tensors, and the RSS probe run as its own process."""

import json
from pathlib import Path

import pytest
import torch

from rocoft import RoCoFTConfig, apply_rocoft
from rocoft.bench.cli import build_parser, main, resolve
from rocoft.bench.estimate import LiveStorageBytes, estimate_memory
from rocoft.bench.rss import rss_in_subprocess
from rocoft.bench.runner import Runner
from rocoft.bench.shapes import SHAPES, Settings, build_model, make_inputs
from rocoft.bench.variants import parse_variant


def _parsed(argv):
    parser = build_parser()
    return parser.parse_args(argv), parser


ESTIMATE_VARIANTS = ["frozen_floor", "rocoft_row_r1", "rocoft_col_r1", "lora_r8", "full_ft"]


def test_memory_estimate_matches_profiled_cpu_run():
    """Fake-tensor estimate (no arithmetic) against a real CPU step measured by the torch profiler."""
    for name in ESTIMATE_VARIANTS:
        s = Settings(shape=SHAPES["tiny-llama"], device=torch.device("cpu"), dtype="float32",
                     autocast=False, batch=4, seq_len=32, warmup=1, repeats=1)
        est = estimate_memory(s, parse_variant(name))
        inputs = make_inputs(s.shape, s.batch, s.seq_len, s.device, s.input_seed)
        inputs.pop("attention_mask")
        runner = Runner(s, parse_variant(name), inputs)
        runner.step()  # optimizer state exists, as in the estimate's later steps
        real = runner.cpu_memory()
        assert est["trainable_params"] == runner.counts["trainable_params"]
        assert est["peak_mb"] == pytest.approx(real["peak_mb"], rel=0.05), name
        if name == "frozen_floor":  # elsewhere the real run's static figure includes AdamW state
            assert est["static_mb"] == pytest.approx(real["static_mb"], rel=0.02), name


def test_memory_estimate_cli(tmp_path):
    result = main(["--shape", "tiny-llama", "--estimate-memory", "--variants", ",".join(ESTIMATE_VARIANTS),
                   "--out", str(tmp_path), "--no-progress"])
    assert Path(result["json"]).name == "efficiency_tiny-llama_fake.json"
    records = {r["variant"]: r for r in json.loads(Path(result["json"]).read_text())}
    assert all(r["device"] == "fake" and r["memory_measure"] == "fake_tensor_estimate" for r in records.values())
    assert records["frozen_floor"]["ratio_mem_vs_floor"] == 1.0
    assert records["full_ft"]["peak_mb"] > records["lora_r8"]["peak_mb"] > records["frozen_floor"]["peak_mb"]
    assert records["rocoft_col_r1"]["peak_mb"] < records["rocoft_row_r1"]["peak_mb"]
    assert "estimated peak MB" in result["table"]
    # llama2-7b needs no GPU for the estimate, and takes the CUDA settings
    _, settings, _ = resolve(*_parsed(["--shape", "llama2-7b", "--estimate-memory"]))
    assert (settings[0].dtype, settings[0].batch, settings[0].seq_len) == ("bfloat16", 4, 512)


def test_rows_rebuilding_inputs_saves_exactly_the_down_proj_inputs():
    """Peak of live storages (real CPU tensors) with and without reuse_saved_inputs on a tiny LLaMA:
    rows keep x for their gradient; rebuilding SwiGLU's act(gate) * up spares exactly those tensors."""
    shape = SHAPES["tiny-llama"]
    batch, seq = 4, 32
    peaks = {}
    for reuse in (True, False):
        model = build_model(shape, torch.device("cpu"), torch.float32, 0)
        apply_rocoft(model, RoCoFTConfig(axis="row", rank=2, reuse_saved_inputs=reuse))
        inputs = make_inputs(shape, batch, seq, torch.device("cpu"), 0)
        live = LiveStorageBytes()
        with live:
            model(**inputs).loss.backward()
        peaks[reuse] = live.peak
    per_layer = batch * seq * shape.config["intermediate_size"] * 4  # float32 down_proj input
    granule = LiveStorageBytes.GRANULE
    expected = shape.config["num_hidden_layers"] * (-(-per_layer // granule) * granule)
    assert peaks[False] - peaks[True] == expected


def test_rss_probe_runs_as_its_own_process():
    """--cpu-memory rss/both: ``python -m rocoft.bench.rss`` in a fresh process, same parameter counts."""
    s = Settings(shape=SHAPES["tiny"], device=torch.device("cpu"), dtype="float32", autocast=False, batch=4,
                 seq_len=32, warmup=0, repeats=1)
    variant = parse_variant("rocoft_row_r1")
    rss = rss_in_subprocess(s, variant, threads=1)
    runner = Runner(s, variant, make_inputs(s.shape, s.batch, s.seq_len, s.device, s.input_seed))
    assert rss["variant"] == "rocoft_row_r1" and rss["trainable_params"] == runner.counts["trainable_params"]
    assert rss["rss_peak_mb"] > 0 and rss["rss_before_mb"] > 0
