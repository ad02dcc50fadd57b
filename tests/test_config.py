"""Every option of every config group composes, resolves and carries the schema the code needs."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose_config


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_required_options():
    assert {"minilm_l6", "tiny_encoder", "tiny_decoder", "tiny_seq2seq"} <= set(options("model"))
    assert {"rotten_tomatoes", "imdb"} <= set(options("task"))
    assert {"rocoft_row", "rocoft_col", "rocoft_random", "full_ft", "bitfit", "ln_tuning", "lora", "adalora", "ia3",
            "loha", "lokr", "vera", "prefix_tuning", "prompt_tuning", "lorafa"} <= set(options("method"))


@pytest.mark.parametrize("group,option", [(g, o) for g in ("model", "task", "method") for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_config([f"{group}={option}", "rank=2", "seed=5"])
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    # an option that inherits another option of its group, e.g. method=rocoft_row_r1 (task YAMLs only merge
    # shared, non-option parts such as task/_shared/commonsense_pool)
    inherited = OmegaConf.load(CONF / group / f"{option}.yaml").get("defaults") or []
    pinned = any(isinstance(d, str) and d.split("@")[0] in options(group) for d in inherited)
    if pinned:
        assert plain[group]["tag"] == option and f"/{option}/" in plain["output_dir"]
        return
    assert plain[group]["name"] == option
    assert str(plain["output_dir"]).endswith("seed5")
    if group == "model":
        assert plain["model"]["source"] in ("hub", "package", "random", "gguf")
        assert plain["model"]["family"] and plain["model"]["target_modules"]
        assert plain["model"]["dtype"] in ("float32", "bfloat16", "float16")
    if group == "task":
        from hydra.utils import get_class

        from rocoft.tasks import KINDS, Task

        assert plain["task"]["kind"] in KINDS
        assert issubclass(get_class(plain["task"]["_target_"]), Task)  # the one way to the class
        assert plain["task"]["split"]["seed"] is not None
    if group == "method":
        from hydra.utils import get_class

        from rocoft.methods import Method

        assert issubclass(get_class(plain["method"]["_target_"]), Method)
        assert plain["train"]["lr"] == plain["method"]["lr"]
        if plain["method"].get("rank") is not None:  # the top-level rank is the method's capacity knob
            assert plain["method"]["rank"] == 2 and "_r2" in plain["output_dir"]
        if plain["method"]["_target_"].endswith(".RoCoFTMethod") and plain["method"]["axis"] == "entry":
            assert 0 < plain["method"]["p"] <= 1 and f"_p{plain['method']['p']}" in plain["output_dir"]


COMMONSENSE = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa")


def test_commonsense_pool_label_words_are_defined_once_and_are_not_a_task():
    pool = list(OmegaConf.load(CONF / "task" / "_shared" / "commonsense_pool.yaml").pool_label_words)
    assert len(pool) == 15 and not any(o.startswith("_") for o in options("task"))
    for task in (*COMMONSENSE, "commonsense_170k"):
        assert "pool_label_words" not in OmegaConf.load(CONF / "task" / f"{task}.yaml")  # only in the shared file
        plain = OmegaConf.to_container(compose_config([f"task={task}"]).task, resolve=True)
        assert plain["pool_label_words"] == pool and plain["name"] == task
    assert OmegaConf.to_container(compose_config(["task=commonsense_170k"]).task, resolve=True)["label_words"] == pool
    assert compose_config(["task=boolq", "task.label_words=[yes,no]"]).task.label_words == ["yes", "no"]


def test_a_task_config_without_target_is_one_clear_error():
    from rocoft.errors import UserError
    from rocoft.tasks import build_task

    cfg = OmegaConf.to_container(compose_config(["task=cola"]).task, resolve=True)
    del cfg["_target_"]
    with pytest.raises(UserError, match="no _target_.*_target_: rocoft.tasks"):
        build_task(cfg)


def test_top_level_keys_a_user_expects():
    cfg = compose_config()
    for key in ("rank", "seed", "output_dir", "device"):
        assert key in cfg
    for key in ("lr", "epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "warmup_steps",
                "scheduler", "weight_decay", "mixed_precision"):
        assert key in cfg.train
    for key in ("max_train_samples", "max_eval_samples", "max_length"):
        assert key in cfg.data
    assert cfg.model.name == "minilm_l6" and cfg.task.name == "rotten_tomatoes"
    assert cfg.method.name == "rocoft_row" and cfg.rank == 3


def cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_headline_model_and_method_compose_from_the_cli():
    out = cli("model=llama2_7b", "method=rocoft_row", "rank=3", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.model.hub_id == "meta-llama/Llama-2-7b-hf" and cfg.method.rank == 3


def test_headline_command_composes_or_names_the_missing_option():
    out = cli("model=llama2_7b", "task=gsm8k", "method=rocoft_row", "rank=3", "--cfg", "job")
    if (CONF / "task" / "gsm8k.yaml").exists():
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0
        assert "Could not find 'task/gsm8k'" in out.stderr and "Traceback" not in out.stderr


def test_unknown_method_is_a_clear_hydra_message():
    out = cli("method=no_such_method", "--cfg", "job")
    assert out.returncode != 0
    assert "Could not find 'method/no_such_method'" in out.stderr and "rocoft_row" in out.stderr
    assert "Traceback" not in out.stderr


def test_learning_rate_precedence_method_then_task_then_cli():
    assert compose_config(["method=lora"]).train.lr == compose_config(["method=lora"]).method.lr
    cfg = compose_config(["method=lora", "+task.lr.lora=1.5e-4", "+task.lr.bitfit=3e-3"])
    assert cfg.train.lr == 1.5e-4
    assert compose_config(["method=lora", "+task.lr.lora=1.5e-4", "train.lr=7e-4"]).train.lr == 7e-4
