"""The eNTK engine against brute-force per-example gradients (float64 autograd, one call per example
and class) on tiny random-init masked and causal LMs: every parameter set, both computation forms,
several classes, padding, different lengths, label words among the inputs (tied embeddings)."""

import copy

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from rocoft.core import RoCoFTConfig, apply_rocoft, find_targets, rocoft_layers
from rocoft.ntk import (KernelEngine, bitfit_set, brute_force_kernel, causal_lm_logits, full_set, group_sets,
                        lora_set, masked_lm_logits, rocoft_set)
from rocoft.ntk.solvers import binary_kernel

V, LABELS = 60, [5, 7, 9]
SMALL = dict(vocab_size=V, num_hidden_layers=2, max_position_embeddings=40)


def make(family: str):
    torch.manual_seed(0)
    if family == "bert":
        cfg = transformers.BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=24, **SMALL)
        return transformers.BertForMaskedLM(cfg).double(), "masked"
    if family == "roberta":
        cfg = transformers.RobertaConfig(hidden_size=16, num_attention_heads=2, intermediate_size=24, pad_token_id=1,
                                         **SMALL)
        return transformers.RobertaForMaskedLM(cfg).double(), "masked"
    if family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                       intermediate_size=24, tie_word_embeddings=True, **SMALL)
        return transformers.LlamaForCausalLM(cfg).double(), "causal"
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=40, bos_token_id=0,
                                  eos_token_id=0)  # Conv1D layers (RoCoFT targets nn.Linear only: no row sets)
    return transformers.GPT2LMHeadModel(cfg).double(), "causal"


def batch(n, length, seed, kind, left=False):
    """Random ids, lengths 2..length (right or left padding), a label word and padding ids inside example 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, length), generator=g)
    lens = torch.randint(2, length + 1, (n,), generator=g)
    lens[0] = length
    mask = (torch.arange(length)[None] < lens[:, None]).long()
    if left:
        mask = mask.flip(1)
    ids = ids * mask + (1 - mask) * 1  # pad id 1 (RoBERTa's padding_idx)
    ids[0, 1] = LABELS[1]
    ids[0, 2], ids[0, 3] = 0, 1  # attended tokens equal to BERT's / RoBERTa's padding_idx: no gradient row
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "masked":
        pos = torch.stack([torch.randint(0, int(n_), (1,), generator=g)[0] for n_ in lens])
        out["input_ids"][torch.arange(n), pos] = 2
        out["mask_pos"] = pos
    return out


def function(model, kind):
    return (masked_lm_logits if kind == "masked" else causal_lm_logits)(model, LABELS)


def data(kind):
    a = [batch(3, 7, 1, kind), batch(2, 5, 2, kind, left=kind == "causal")]
    return a, [batch(4, 6, 3, kind)]


def param_sets(model):
    sets = {"full": full_set(model), "bitfit": bitfit_set(model), **group_sets(model)}
    if model.config.model_type != "gpt2":
        sets.update(rows=rocoft_set(model, "row", 2, selection="random", seed=3), cols=rocoft_set(model, "column", 1))
    return sets


def close(a, b):
    scale = b.abs().max()
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-10 * float(scale) + 1e-300, (float((a - b).abs().max()), float(scale))


@pytest.mark.parametrize("family", ["bert", "roberta", "llama", "gpt2"])
@pytest.mark.parametrize("mode", ["factored", "materialised", "auto"])
def test_engine_equals_brute_force(family, mode):
    model, kind = make(family)
    fn = function(model, kind)
    a, b = data(kind)
    sets = param_sets(model)
    engine = KernelEngine(model, fn, sets, mode=mode)
    cross, sym = engine.kernels(a, b), engine.kernels(a)
    assert engine.stats["factored" if mode == "factored" else "materialised"] > 0
    for name, pset in sets.items():
        close(cross[name], brute_force_kernel(model, fn, pset, a, b))
        close(sym[name], brute_force_kernel(model, fn, pset, a))
    assert sets["bitfit"].selections or family == "llama"


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_symmetric_psd_and_decompositions(family):
    model, kind = make(family)
    fn = function(model, kind)
    a, _ = data(kind)
    full = full_set(model)
    rows, cols = rocoft_set(model, "row", 2), rocoft_set(model, "column", 3, selection="random", seed=1)
    sets = {"full": full, "rows": rows, "rows_rest": rows.complement(full), "cols": cols,
            "cols_rest": cols.complement(full), **{f"g_{g}": s for g, s in group_sets(model).items()}}
    k = KernelEngine(model, fn, sets).kernels(a)
    n, c = k["full"].shape[:2]
    mat = k["full"].reshape(n * c, n * c)
    close(mat, mat.T)
    assert float(torch.linalg.eigvalsh(mat).min()) >= -1e-10 * float(mat.abs().max())
    close(k["rows"] + k["rows_rest"], k["full"])
    close(k["cols"] + k["cols_rest"], k["full"])
    close(sum(v for n_, v in k.items() if n_.startswith("g_")), k["full"])
    counts = {name: s.counts["total"] for name, s in sets.items()}
    assert counts["rows"] + counts["rows_rest"] == counts["full"] == sum(p.numel() for p in model.parameters())
    assert all(float(k[s].abs().max()) > 0 for s in ("rows", "rows_rest", "cols", "cols_rest"))


def test_binary_kernel_is_the_kernel_of_the_logit_difference():
    model, kind = make("bert")
    two = masked_lm_logits(model, LABELS[:2])
    a, b = data(kind)
    k = KernelEngine(model, two, full_set(model)).kernels(a, b)["full"]
    diff = lambda batch: (lambda o: (o[:, 1] - o[:, 0])[:, None])(two(batch))  # noqa: E731
    close(binary_kernel(k), brute_force_kernel(model, diff, full_set(model), a, b)[:, 0, :, 0])


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_lora_kernel_equals_brute_force_on_peft_lora_at_init(family):
    """Kernel of LoRA's B at init from (A x_i . A x_j)(g_i . g_j), against gradients of peft's own lora_B."""
    model, kind = make(family)
    fn = function(model, kind)
    a, b = data(kind)
    lora = lora_set(model, rank=3, alpha=6, seed=11)
    k = KernelEngine(model, fn, lora).kernels(a, b)[lora.name]
    names = find_targets(model, RoCoFTConfig())
    torch.manual_seed(11)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0,
                                                                 target_modules=names))
    extra = {n + ".weight": peft_model.base_model.model.get_submodule(n).lora_B["default"].weight for n in names}
    assert all(float(t.detach().abs().max()) == 0 for t in extra.values())  # B = 0 at init
    reference = brute_force_kernel(peft_model, function(peft_model, kind), lora, a, b, extra=extra)
    close(k, reference)
    assert float(reference.abs().max()) > 0
    assert lora.counts["total"] == sum(t.numel() for t in extra.values())


@pytest.mark.parametrize("axis", ["row", "column"])
def test_rocoft_set_indices_are_those_a_rocoft_run_trains(axis):
    model, _ = make("llama")
    pset = rocoft_set(model, axis, 3, selection="random", seed=5)
    trained = apply_rocoft(copy.deepcopy(model), RoCoFTConfig(axis=axis, rank=3, selection="random", seed=5))
    layers = dict(rocoft_layers(trained))
    assert len(layers) == len(pset.selections) > 0
    for name, layer in layers.items():
        assert torch.equal(pset.selections[name + ".weight"].index, layer.slice().index.sort().values)


def test_bad_inputs_are_clear_errors():
    model, kind = make("bert")
    fn = function(model, kind)
    with pytest.raises(ValueError, match="axis"):
        rocoft_set(model, "diagonal", 1)
    bad = full_set(model)
    bad.selections["bert.embeddings.LayerNorm.weight"] = rocoft_set(model, "row", 1).selections[
        "bert.encoder.layer.0.attention.self.query.weight"]
    with pytest.raises(ValueError, match="LayerNorm"):
        KernelEngine(model, fn, bad)
    with pytest.raises(ValueError, match="mask_pos"):
        KernelEngine(model, fn, full_set(model)).kernels([{"input_ids": torch.ones(2, 3, dtype=torch.long)}])
