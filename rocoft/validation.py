"""Checks of a run's settings, made before anything is written: one clear error (exit code 2) for values
that would otherwise give a traceback mid-run, a run directory marked failed, or a silently wrong run.

:func:`validate_config` checks the composed config alone (numbers, ``model.path``); :class:`CheckBeforeRun`
runs it, and checks that the run directory can be written, from Hydra's ``on_run_start`` callback, that is
before Hydra creates the run directory. :func:`check_max_length` and :func:`check_positions` need the
tokenizer and the model's config: the run calls them when it has them, before training.
"""

from __future__ import annotations

import sys
from numbers import Real
from pathlib import Path

from hydra.experimental.callback import Callback

from .errors import UserError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value  # not NaN


# (key, rule, what the rule says): the settings whose bad values are not caught (or caught late) elsewhere
RULES = [
    ("train.lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("train.batch_size", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("train.eval_batch_size", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("train.gradient_accumulation_steps", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("train.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("train.max_steps", lambda v: v is None or (_is_int(v) and v >= 0), "null or an integer >= 0"),
    ("train.log_every", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("train.checkpoint_every", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: only on a stop signal)"),
    ("train.keep_checkpoints", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("train.eval_every", lambda v: v is None or (_is_int(v) and v > 0), "null or an integer > 0"),
    ("data.max_length", lambda v: _is_int(v) and v > 0, "an integer > 0"),
    ("data.max_train_samples", lambda v: v is None or (_is_int(v) and v > 0), "null or an integer > 0"),
    ("data.max_eval_samples", lambda v: v is None or (_is_int(v) and v > 0), "null or an integer > 0"),
]


def validate_config(cfg) -> None:
    """Raise one :class:`UserError` listing every bad value of ``cfg`` (a composed run config)."""
    from omegaconf import OmegaConf

    problems = []
    for key, ok, rule in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if not ok(value):
            problems.append(f"{key}={value!r} must be {rule}")
    epochs, max_steps = OmegaConf.select(cfg, "train.epochs"), OmegaConf.select(cfg, "train.max_steps")
    if epochs == 0 and not max_steps:
        problems.append("train.epochs=0 with no train.max_steps trains nothing: give train.epochs >= 1 "
                        "(or train.max_steps > 0)")
    path = OmegaConf.select(cfg, "model.path", default=None)
    if path:
        folder = Path(str(path)).expanduser()
        if not (folder / "config.json").is_file():
            what = "no config.json in it" if folder.is_dir() else "not a folder"
            problems.append(f"model.path={folder} holds no model ({what}): point it to a folder written by "
                            f"save_pretrained (config.json, the weights, the tokenizer)")
    try:
        from .checkpoint import parse_signals

        parse_signals(OmegaConf.select(cfg, "train.stop_signals", default=()) or ())
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("Invalid setting" + ("s: " if len(problems) > 1 else ": ") + "; ".join(problems) + ".")


def check_max_length(max_length: int, tokenizer, texts: int = 1) -> None:
    """``data.max_length`` must hold the special tokens the tokenizer adds plus one token of each of the
    ``texts`` texts of an example (2: a text pair), else every input would be empty of text."""
    specials = tokenizer.num_special_tokens_to_add(pair=texts == 2)
    if max_length < specials + texts:
        raise UserError(f"data.max_length={max_length} leaves no room for the text: the tokenizer adds {specials} "
                        f"special token(s) to each {'text pair' if texts == 2 else 'text'}, so data.max_length must "
                        f"be at least {specials + texts}.")


ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")  # positions counted from pad_token_id + 1


def position_limit(config) -> int | None:
    """The longest input a model's learned absolute position embeddings hold (None: no such limit, e.g.
    relative positions, DeBERTa-v3)."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa: relative positions only
        return None
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return None
    if getattr(config, "model_type", None) in ROBERTA_LIKE:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return int(limit)


def check_positions(max_length: int, config, model_name: str) -> None:
    """``data.max_length`` must fit the model's position embeddings (else a tensor-size error mid-run)."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise UserError(f"data.max_length={max_length} exceeds the {limit} positions of model {model_name!r}; "
                        f"use data.max_length<={limit}.")


class CheckBeforeRun(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): before Hydra creates the run directory,
    check the config (:func:`validate_config`) and that the run directory can be written; either problem
    is one message on stderr and exit code 2, with nothing created (a bad config) or written. ``validate``: the
    dotted name of the check (default :func:`validate_config`; ``conf/ntk.yaml`` names scripts/ntk.py's)."""

    def __init__(self, validate: str = "rocoft.validation.validate_config"):
        self.validate = validate

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, Path(str(config.hydra.run.dir)), validate=True)

    def on_multirun_start(self, config, **kwargs) -> None:
        # the settings may differ between the sweep's jobs: each job checks its own (rocoft.runs.run)
        self._check(config, Path(str(config.hydra.sweep.dir)), validate=False)

    def _check(self, config, directory: Path, validate: bool) -> None:
        from .rundir import USER_ERROR_EXIT, check_output_dir

        try:
            if validate:
                from hydra.utils import get_method

                get_method(self.validate)(config)
            check_output_dir(directory)
        except UserError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
