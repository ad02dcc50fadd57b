"""Ratios to the frozen floor and the Markdown report of benchmark records.

Every figure of a shape is also given as its ratio to that shape's ``frozen_floor`` record
(``ratio_<figure>_vs_floor``; the floor's own ratios are exactly 1.0), and the report has one table per
shape.
"""

from __future__ import annotations

from .measure import MEMORY_DOC

RATIOS = (("step_ms", "ratio_time_vs_floor"), ("step_ms_min", "ratio_min_time_vs_floor"),
          ("peak_mb", "ratio_mem_vs_floor"), ("rss_peak_mb", "ratio_rss_vs_floor"))


def add_ratios(records: list[dict]) -> None:
    """ratio_*_vs_floor per shape; the floor's own ratios are exactly 1.0."""
    for shape in {r["shape"] for r in records}:
        rows = [r for r in records if r["shape"] == shape]
        floor = next((r for r in rows if r["variant"] == "frozen_floor"), None)
        for r in rows:
            for key, out in RATIOS:
                if key not in r:
                    continue
                a, b = r.get(key), (floor or {}).get(key)
                r[out] = (a / b) if (a is not None and b) else None


def _fmt(x, spec=",.1f", none="n/a"):
    return none if x is None else format(x, spec)


def markdown_table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A Markdown table's lines: ``left`` leading text columns, the rest right-aligned numbers."""
    return (["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


ESTIMATE_HEADER = ["variant", "trainable params", "% of total", "static MB", "estimated peak MB", "x floor"]
TIMED_HEADER = ["variant", "trainable params", "% of total", "step ms (median)", "x floor", "min-max ms",
                "min x floor", "peak MB", "x floor"]


def _estimate_row(r: dict) -> list[str]:
    return [r["variant"], f"{r['trainable_params']:,}", f"{r['trainable_pct']:.3f}", f"{r['static_mb']:,.0f}",
            f"{r['peak_mb']:,.0f}", _fmt(r.get("ratio_mem_vs_floor"), ".3f")]


def _timed_row(r: dict, has_rss: bool) -> list[str]:
    rss = [_fmt(r.get("rss_peak_mb"), ",.0f"), _fmt(r.get("ratio_rss_vs_floor"), ".2f")] if has_rss else []
    if r.get("oom"):
        return [r["variant"], _fmt(r.get("trainable_params"), ",d"), "", "OOM", "", "", "", "OOM", ""]
    t = r["step_ms_all"]
    return [r["variant"], f"{r['trainable_params']:,}", f"{r['trainable_pct']:.3f}", f"{r['step_ms']:,.1f}",
            _fmt(r.get("ratio_time_vs_floor"), ".2f"), f"{min(t):,.0f}-{max(t):,.0f}",
            _fmt(r.get("ratio_min_time_vs_floor"), ".2f"), _fmt(r.get("peak_mb"), ",.0f"),
            _fmt(r.get("ratio_mem_vs_floor"), ".2f"), *rss]


def markdown(records: list[dict], header: dict) -> str:
    """The report: provenance line, then per shape its settings, memory measure and table."""
    lines = ["# RoCoFT efficiency benchmark", "",
             f"torch {header['versions']['torch']}, transformers {header['versions']['transformers']}, "
             f"peft {header['versions']['peft']}; device {header['device_name']}; {header['threads']} CPU threads; "
             f"command: `{header['command']}`", ""]
    for shape in dict.fromkeys(r["shape"] for r in records):
        rows = [r for r in records if r["shape"] == shape]
        r0 = rows[0]
        has_rss = any("rss_peak_mb" in r for r in rows)
        estimate = r0.get("memory_measure") == "fake_tensor_estimate"
        timing = (f"median of {r0['repeats']} steps after {r0['warmup']} warm-up"
                  if not estimate else "memory estimate only, 3 steps")
        lines += [f"## {shape}: {r0['model_class']}, {r0['device']}, {r0['dtype']}"
                  f"{' + bf16 autocast' if r0['autocast'] else ''}, batch {r0['batch']} x seq {r0['seq_len']}, "
                  f"{timing}"
                  f"{' (variants interleaved step by step)' if r0.get('interleaved') else ''}", "",
                  f"memory: {MEMORY_DOC.get(r0.get('memory_measure'), 'not measured')}"
                  + (f"; rss: {MEMORY_DOC['rss']}" if has_rss else ""), ""]
        if estimate:
            lines += markdown_table(ESTIMATE_HEADER, [_estimate_row(r) for r in rows])
        else:
            head = TIMED_HEADER + (["RSS peak MB", "x floor"] if has_rss else [])
            lines += markdown_table(head, [_timed_row(r, has_rss) for r in rows])
        lines.append("")
    return "\n".join(lines)
