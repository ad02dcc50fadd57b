"""Bad input through the real command line: one clear message, exit code 2, no traceback, nothing created
(a bad setting) or nothing half-written (a full disk); inputs that used to be silently accepted."""

import contextlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, compose_config, small_run_overrides
from rocoft.errors import UserError
from rocoft.runs import execute

SMALL = ["model=tiny_encoder", "device=cpu", "train.max_steps=2", "data.max_train_samples=64",
         "data.max_eval_samples=16", "train.batch_size=16"]


def cli(results, *args):
    return subprocess.run([sys.executable, "train.py", f"results_dir={results}", *SMALL, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def nothing_in(path) -> bool:
    return not path.exists() or not any(path.iterdir())


# ---- item 7: settings checked before anything is created (Hydra's run directory included)
@pytest.mark.parametrize("args,message", [
    (["train.lr=-0.001"], "train.lr=-0.001 must be a number > 0"),
    (["train.lr=abc"], "train.lr='abc' must be a number > 0"),
    (["train.batch_size=0"], "train.batch_size=0 must be an integer > 0"),
    (["train.batch_size=-4"], "train.batch_size=-4 must be an integer > 0"),
    (["train.gradient_accumulation_steps=0"], "train.gradient_accumulation_steps=0 must be an integer > 0"),
    (["train.eval_batch_size=0", "train.max_steps=-1"], "train.eval_batch_size=0 must be an integer > 0; "
                                                        "train.max_steps=-1 must be null or an integer >= 0"),
    (["train.epochs=0", "train.max_steps=null"], "train.epochs=0 with no train.max_steps trains nothing"),
    (["model.path=EMPTY"], "holds no model (no config.json in it)"),
])
def test_bad_settings_create_nothing(tmp_path, args, message):
    (tmp_path / "empty_model").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty_model")) for a in args]
    out = cli(tmp_path / "results", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()


def test_epochs_and_max_steps_rules():
    from rocoft.validation import validate_config

    validate_config(compose_config(["train.epochs=0", "train.max_steps=5"]))  # max_steps overrides epochs
    validate_config(compose_config(["train.lr=1", "train.max_steps=0"]))  # an int lr; max_steps 0: epochs rule
    for bad in (["train.epochs=-1"], ["train.epochs=1.5"], ["train.log_every=0"], ["train.batch_size=true"],
                ["data.max_length=0"], ["train.stop_signals=[SIGFOO]"]):
        with pytest.raises(UserError, match=bad[0].split("=")[0]):
            validate_config(compose_config(bad))


# ---- item 8: an unwritable results_dir, a full disk during a checkpoint (real file systems: tmpfs, as root)
@contextlib.contextmanager
def tmpfs(path, options):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("sweep", [False, True])
def test_read_only_results_dir(tmp_path, sweep):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        out = subprocess.run([sys.executable, "train.py", *(["-m"] if sweep else []), f"results_dir={ro / 'results'}",
                              *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Cannot write to output_dir" in out.stderr and "Read-only file system" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\nerror:") == 1


def test_full_disk_during_a_checkpoint(tmp_path):
    """Full fine-tuning of the tiny model: a 12 MB checkpoint on a 2 MB disk, where the config and logs fit."""
    with tmpfs(tmp_path / "small", "size=2m") as disk:
        out = cli(disk, "method=full_ft", "train.max_steps=4", "train.checkpoint_every=2")
        run_dir = disk.joinpath("rotten_tomatoes", "tiny_encoder", "full_ft", "seed0")
        status = json.loads((run_dir / "status.json").read_text())
        partial = list(run_dir.rglob(".tmp-*"))
        logged = (run_dir / "log.jsonl").read_text()
    assert out.returncode == 2 and "The disk is full" in out.stderr, out.stderr[-3000:]
    assert "checkpoint of step 2" in out.stderr and "Traceback" not in out.stderr
    assert status["status"] == "failed" and "disk is full" in status["error"] and status["kind"] == "user_error"
    assert partial == [] and '"step": 2' in logged


# ---- item 9: inputs that were silently accepted
def run_in_process(tmp_path, capsys, *args):
    overrides = [o for o in small_run_overrides(tmp_path / "results") if not o.startswith("train.batch_size")]
    with pytest.raises(SystemExit) as exit_info:
        execute(compose_config(overrides + ["model=tiny_encoder", "train.batch_size=8", *args]))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("max_length", [1, 2])
def test_max_length_too_small_for_any_text(tmp_path, capsys, max_length):
    code, err = run_in_process(tmp_path, capsys, f"data.max_length={max_length}")
    assert code == 2 and f"data.max_length={max_length} leaves no room for the text" in err
    assert "at least 3" in err and nothing_in(tmp_path / "results")  # [CLS] text [SEP]


def test_max_length_minimum_is_the_special_tokens_plus_one_per_text():
    from rocoft.models import load_tokenizer
    from rocoft.validation import check_max_length

    tokenizer = load_tokenizer(compose_config(["model=tiny_encoder"]).model)
    assert tokenizer("a b c", truncation=True, max_length=3)["input_ids"][1:-1] != []  # 3 holds one word
    check_max_length(3, tokenizer)
    check_max_length(5, tokenizer, texts=2)  # [CLS] a [SEP] b [SEP]
    with pytest.raises(UserError, match="at least 5"):
        check_max_length(4, tokenizer, texts=2)


def test_max_length_above_the_model_positions(tmp_path, capsys):
    code, err = run_in_process(tmp_path, capsys, "task=imdb", "data.max_length=512")
    assert code == 2 and "data.max_length=512 exceeds the 128 positions of model 'tiny_encoder'" in err, err
    assert nothing_in(tmp_path / "results")


def test_position_limits_of_model_families():
    from transformers import AutoConfig

    from rocoft.validation import position_limit

    assert position_limit(AutoConfig.for_model("bert", max_position_embeddings=128)) == 128
    assert position_limit(AutoConfig.for_model("roberta", max_position_embeddings=514, pad_token_id=1)) == 512
    assert position_limit(AutoConfig.for_model("bert", position_embedding_type="relative_key")) is None
    assert position_limit(AutoConfig.for_model("deberta-v2", position_biased_input=False)) is None


def test_blank_label_cells_are_an_error_naming_the_rows(tmp_path, capsys):
    path = tmp_path / "train.csv"
    labels = ["pos", "neg"] * 30
    labels[4] = labels[11] = ""
    pd.DataFrame({"text": [f"a b {i}" for i in range(60)], "label": labels}).to_csv(path, index=False)
    code, err = run_in_process(tmp_path, capsys, "task=text_classification", f"task.data_files.train={path}")
    assert code == 2 and "2 row(s) have a blank 'label' label: data row(s) 5, 12" in err, err
    assert nothing_in(tmp_path / "results")


@pytest.mark.parametrize("content,found", [
    ({"text": "a b", "label": 0}, "a JSON object with keys ['text', 'label']"),
    ({"data": [{"text": "a b", "label": 0}] * 40}, "a JSON object with keys ['data']"),
    ([1, 2, 3], "a JSON list of non-records"),
])
def test_json_that_is_not_a_list_of_records(tmp_path, capsys, content, found):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(content))
    code, err = run_in_process(tmp_path, capsys, "task=text_classification", f"task.data_files.train={path}")
    assert code == 2 and found in err and "must be a list of records" in err, err


def test_json_tables_still_read(tmp_path):
    from rocoft.tasks.data import read_table

    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    for name, text in (("records.json", frame.to_json(orient="records")), ("columns.json", frame.to_json()),
                       ("lines.json", frame.to_json(orient="records", lines=True))):
        (tmp_path / name).write_text(text)
        pd.testing.assert_frame_equal(read_table(tmp_path / name), frame)


# ---- item 10: Hydra's own composition errors are user errors too
@pytest.mark.parametrize("args,message", [
    (["train.lrr=1"], "Could not override 'train.lrr'"),
    (["method=rocoft_rows"], "Could not find 'method/rocoft_rows'"),
    (["-m", "method=rocoft_rows"], "Could not find 'method/rocoft_rows'"),
    (["train.lr=[1,"], "no viable alternative"),
])
def test_hydra_composition_errors_exit_2(tmp_path, args, message):
    out = subprocess.run([sys.executable, "train.py", *args, f"results_dir={tmp_path / 'results'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()


def test_an_unexpected_error_still_exits_1(tmp_path):
    """Only composition errors become exit code 2: a crash inside the run keeps Hydra's exit code 1."""
    out = cli(tmp_path / "results", "+model.config.no_such_setting=1", "model.family=no_such_family")
    assert out.returncode == 1, out.stderr[-3000:]
