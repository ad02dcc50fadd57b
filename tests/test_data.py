"""Task data: the seeded splits, local-file overrides and clear errors for bad data."""

import pandas as pd
import pytest
import torch

from conftest import compose_config
from rocoft.errors import UserError
from rocoft.models import load_tokenizer
from rocoft.sampling import LengthGroupedBatchSampler
from rocoft.tasks import build_task


@pytest.mark.parametrize("task,n_train", [("rotten_tomatoes", 8530 - 2000), ("imdb", 25000 - 96 - 2000)])
def test_packaged_split_is_stratified_disjoint_and_fixed(task, n_train):
    cfg = compose_config([f"task={task}"]).task
    splits = build_task(cfg).load()
    assert {k: len(v) for k, v in splits.items()} == {"train": n_train, "validation": 1000, "test": 1000}
    texts = {k: set(v.text) for k, v in splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    assert not (texts["validation"] & texts["test"])
    pool = pd.concat(splits.values()).label.mean()
    for df in splits.values():  # stratified: each split's class balance is the pool's, to one example
        assert abs(df.label.mean() - pool) <= 1 / len(df)
    again = build_task(compose_config([f"task={task}", "seed=7"]).task).load()  # the run seed does not move it
    assert all(again[k].text.tolist() == splits[k].text.tolist() for k in splits)


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_data_files_override_and_carving(tmp_path):
    rows = [{"text": f"review number {i}", "label": i % 2} for i in range(40)]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:6])
    cfg = compose_config(["task=rotten_tomatoes", f"++task.data_files.train={train}",
                          f"++task.data_files.test={test}", "task.split.validation=10"]).task
    splits = build_task(cfg).load()
    assert len(splits["test"]) == 6 and len(splits["validation"]) == 10 and len(splits["train"]) == 30
    assert splits["validation"].label.sum() == 5


def test_missing_column_and_bad_labels_are_clear(tmp_path):
    tok = load_tokenizer(compose_config(["model=tiny_encoder"]).model)
    task = build_task(compose_config().task)
    # columns are checked once, by the loader (encode trusts its input): every split, the label column too
    no_text = write_csv(tmp_path / "no_text.csv", [{"sentence": "a", "label": 0}] * 4)
    with pytest.raises(UserError, match=r"train split .* lacks column\(s\) \['text'\].*task.text_fields"):
        build_task(compose_config([f"++task.data_files.train={no_text}"]).task).load()
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    no_label = write_csv(tmp_path / "no_label.csv", [{"text": "a"}] * 4)
    with pytest.raises(UserError, match=r"test split .* lacks column\(s\) \['label'\]"):
        build_task(compose_config([f"++task.data_files.train={write_csv(tmp_path / 'ok.csv', rows)}",
                                   f"++task.data_files.test={no_label}"]).task).load()
    with pytest.raises(UserError, match="outside the label set"):
        task.encode(pd.DataFrame({"text": ["a", "b"], "label": [0, 2]}), tok, 16)
    with pytest.raises(UserError, match="outside the label set"):
        task.encode(pd.DataFrame({"text": ["a"], "label": ["good"]}), tok, 16)
    with pytest.raises(UserError, match="must be integers"):
        task.encode(pd.DataFrame({"text": ["a"], "label": [0.5]}), tok, 16)


def test_missing_data_file_is_clear(tmp_path):
    cfg = compose_config([f"++task.data_files.train={tmp_path / 'nope.csv'}"]).task
    with pytest.raises(UserError, match="does not exist"):
        build_task(cfg).load()


def test_offline_hub_dataset_without_files_names_the_dataset_and_the_fix():
    cfg = compose_config(["task.dataset.source=hub"]).task
    with pytest.raises(UserError) as err:
        build_task(cfg).load()
    msg = str(err.value)
    assert "cornell-movie-review-data/rotten_tomatoes" in msg and "task.data_files.train=" in msg
    assert "text" in msg and "label" in msg


def test_length_grouped_sampler_covers_every_example_once_and_is_seeded():
    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    s = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, mega_batches=4)
    epoch0 = list(s)
    flat = sorted(i for b in epoch0 for i in b)
    assert flat == list(range(203)) and len(epoch0) == len(s) == 26
    assert [len(b) for b in epoch0] == [8] * 25 + [3]  # the short batch last, as multi-process loaders need
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=3, mega_batches=4)) == epoch0
    assert list(s) == epoch0  # the order depends on (seed, epoch) only
    s.set_epoch(1)
    assert list(s) != epoch0  # the next epoch reshuffles
    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    perm = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [perm[i:i + 8] for i in range(0, 203, 8)]
    assert spread(epoch0) < 0.5 * spread(random_batches)


def test_tsv_and_csv_keep_quotes_and_na_words(tmp_path):
    from rocoft.tasks.data import read_table

    tsv = tmp_path / "train.tsv"
    tsv.write_text('question1\tquestion2\tlabel\n"Why is the sky blue?\tNA\t1\n'
                   'he said "yes" twice\tnull\t0\nplain\tNone\t1\nlast\tN/A\t0\n')
    df = read_table(tsv)
    assert len(df) == 4  # pandas' default quoting would swallow rows after the unbalanced quote
    assert df["question1"].tolist()[:2] == ['"Why is the sky blue?', 'he said "yes" twice']
    assert df["question2"].tolist() == ["NA", "null", "None", "N/A"]
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,label\n"a, quoted, text",1\nNA,0\n')
    assert read_table(csv_path)["text"].tolist() == ["a, quoted, text", "NA"]


def test_fractional_carving_is_a_fraction_of_the_whole_file():
    from rocoft.tasks.data import SplitSpec, carve_splits

    df = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": [i % 2 for i in range(1000)]})
    out = carve_splits({"train": df}, SplitSpec(validation=0.1, test=0.1, seed=0), "label")
    assert (len(out["train"]), len(out["validation"]), len(out["test"])) == (800, 100, 100)


def test_task_configs_are_constructor_arguments():
    from rocoft.tasks import PROTOCOL_KEYS
    from rocoft.tasks.classification import ClassificationTask

    cfg = compose_config(["task=cola"]).task
    assert cfg._target_ == "rocoft.tasks.classification.ClassificationTask"
    assert {"hparams", "lr", "rocoft", "seq_len", "kind"} <= set(cfg) and set(PROTOCOL_KEYS) <= set(cfg) | {"kind"}
    task = build_task(cfg)  # the protocol keys (read by conf/config.yaml and the methods) are left out
    assert isinstance(task, ClassificationTask) and task.metrics == ["matthews_corr", "accuracy"]
    assert (task.main_metric, task.eval_splits, task.split.seed) == ("matthews_corr", ["validation"], 1234)
    direct = ClassificationTask(name="mine", text_fields=["review"], num_labels=3)  # usable without a config
    assert direct.num_labels == 3 and direct.eval_splits == ["validation", "test"] and direct.main_metric == "accuracy"
    with pytest.raises(UserError, match="no setting.*'text_feilds'"):
        build_task(compose_config(["task=cola", "+task.text_feilds=[a]"]).task)
    with pytest.raises(UserError, match="task.split"):
        build_task(compose_config(["task=cola", "+task.split.sed=1"]).task)


def test_encode_returns_what_scoring_needs_and_the_task_keeps_no_split_state():
    tok = load_tokenizer(compose_config(["model=tiny_encoder"]).model)
    task = build_task(compose_config().task)
    a = task.encode(pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}), tok, 16, "validation")
    b = task.encode(pd.DataFrame({"text": ["dull", "nice"], "label": [0, 1]}), tok, 16, "test")
    assert (a.split, len(a), b.split, len(b)) == ("validation", 3, "test", 2) and a.tokenizer is tok
    assert [r["labels"] for r in a.rows] == [1, 0, 1] and a[0] is a.rows[0]
    metrics, records = task.score({"preds": torch.tensor([1, 1, 1]), "labels": torch.tensor([1, 0, 1])}, a)
    assert metrics == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(0.8)} and records is None
