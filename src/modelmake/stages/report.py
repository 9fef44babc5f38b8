"""The report over a run or a sweep: what quantization cost, what fine-tuning bought, whether
ONNX computes what PyTorch computes, how big and how fast — readable in a minute.

Writes `report.md` and `report.html` (same content) with the metrics tables, the best point by
a configurable metric, training/eval loss curves and plots of quality vs size vs tokens/s
(PNG, matplotlib), which upstream artifacts the points shared, and a sample generation per adapter.
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from modelmake.core import journal  # noqa: E402
from modelmake.core.errors import ModelmakeError  # noqa: E402

PPL_COLUMNS = [("ppl_fp32", "fp32"), ("ppl_rtn_int4", "RTN int4"), ("ppl_awq_int4", "AWQ int4"),
               ("ppl_awq_lora", "AWQ+LoRA (torch)"), ("ppl_onnx_lora", "ONNX int4+LoRA")]
MB = 1e-6  # decimal megabytes, as the column headers say


def load_points(node) -> list[dict]:
    """One record per sweep point: its label, evaluate metrics, loss curve, generation."""
    count = len({name.split(".")[1] for name in node.inputs})  # inputs are named <stage>.<point>
    labels = point_labels([node.inputs[f"evaluate.{i}"].overrides for i in range(count)])
    points = []
    for i in range(count):
        ev, ft, gen = (node.inputs[f"{s}.{i}"] for s in ("evaluate", "finetune", "generate"))
        with (ft.path / "train_log.csv").open() as f:
            curve = list(csv.DictReader(f))
        points.append({
            "label": labels[i],
            "metrics": json.loads((ev.path / "metrics.json").read_text()),
            "finetune": json.loads((ft.path / "metrics.json").read_text()),
            "curve": curve,
            "generation": json.loads((gen.path / "generation.json").read_text()),
            "keys": upstream_keys(ev),
            # decode speed is a measurement of this machine, not part of the artifacts: the journal's
            "measured": (journal.latest("evaluate", ev.key) or {}).get("measured", {}),
            "generation_measured": (journal.latest("generate", gen.key) or {}).get("measured", {}),
        })
    return points


def upstream_keys(node) -> dict[str, str]:
    """Stage -> key of every artifact `node` was built from, all the way down."""
    keys, todo = {}, list(node.inputs.values())
    while todo:
        n = todo.pop()
        keys.setdefault(n.stage, n.key)
        todo.extend(n.inputs.values())
    return keys


def point_labels(overrides: list[tuple[str, ...]]) -> list[str]:
    """Each point named by the overrides that differ between points ("default" for one run)."""
    overrides = [tuple(o for o in ov if not o.startswith("threads=")) for ov in overrides]  # not a setting
    if len(overrides) == 1:
        return [" ".join(overrides[0]) or "default"]
    varying = [i for i in range(len(overrides[0])) if len({o[i] for o in overrides}) > 1]
    return [" ".join(o[i] for i in varying) or f"point {n}" for n, o in enumerate(overrides)]


def best_point(points: list[dict], metric: str, mode: str) -> dict:
    have = [p for p in points if isinstance(p["metrics"].get(metric), (int, float))]
    if not have:
        raise ModelmakeError(f"report.best_metric: no point has evaluate metric '{metric}' "
                             f"(have: {sorted(points[0]['metrics'])})")
    if mode not in ("min", "max"):
        raise ModelmakeError(f"report.best_mode: must be min or max, got {mode!r}")
    pick = min if mode == "min" else max
    return pick(have, key=lambda p: p["metrics"][metric])


def fmt(v, digits=4) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def tables(points: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    quality = (["point"] + [name for _, name in PPL_COLUMNS]
               + ["KL(fp32‖RTN)", "KL(fp32‖AWQ)", "parity max abs Δlogit", "top-1 agree"],
               [[p["label"]] + [fmt(p["metrics"].get(k)) for k, _ in PPL_COLUMNS]
                + [fmt(p["metrics"].get("kl_rtn_int4"), 3), fmt(p["metrics"].get("kl_awq_int4"), 3),
                   fmt(p["metrics"].get("parity_max_abs_logit_diff"), 3),
                   fmt(p["metrics"].get("parity_top1_agreement"), 3)] for p in points])
    out = [("Held-out perplexity, quantization damage (mean per-token KL from fp32) and ONNX-vs-PyTorch parity",
            *quality)]
    if any("accuracy_after" in p["metrics"] for p in points):
        out.append(("Label accuracy (classification-style data)",
                    ["point", "labels", "majority label", "before fine-tune", "after"],
                    [[p["label"], fmt(p["metrics"].get("labels")), fmt(p["metrics"].get("accuracy_majority"), 3),
                      fmt(p["metrics"].get("accuracy_before"), 3), fmt(p["metrics"].get("accuracy_after"), 3)]
                     for p in points]))
    def ms(m, k):
        return fmt(1000 * m[k], 3) if k in m else "–"

    def speed_row(p):
        me, m = p["measured"], p["metrics"]
        return [p["label"], fmt(me.get("ort_int4_tokens_per_s"), 5), fmt(me.get("hf_fp32_tokens_per_s"), 4),
                fmt(me.get("speedup_ort_vs_hf"), 3), ms(me, "ort_int4_ttft_s"), ms(me, "ort_int4_setup_s"),
                ms(me, "hf_fp32_ttft_s"), *(fmt(m.get(k, 0) * MB, 3) for k in
                                             ("fp32_model_bytes", "awq_model_bytes", "onnx_model_bytes",
                                              "onnx_adapter_bytes"))]

    speed_cols = ["point", "ORT int4 tok/s", "HF fp32 tok/s", "speed-up", "ORT TTFT ms", "ORT Generator setup ms",
                  "HF TTFT ms", "fp32 MB", "AWQ MB", "ONNX MB", "adapter MB"]
    out.append(("Speed (one thread, median, measured on this machine) and size on disk (MB = 10^6 bytes)",
                speed_cols, [speed_row(p) for p in points]))
    merged = [p for p in points if "kl_fp32lora_merged_awq" in p["metrics"]]
    if merged:
        out.append(merged_table(merged))
    return out


MERGED_ROWS = (("awq_lora", "AWQ+LoRA (torch, as trained)", None),
               ("onnx_lora", "multi-LoRA graph + adapter", "ort_int4"),
               ("merged_rtn", "merged-RTN (Olive: dequantized AWQ + LoRA, RTN int4)", "merged_rtn"),
               ("merged_awq", "merged-AWQ (fp32 + LoRA, AWQ re-run)", "merged_awq"))


def merged_table(points: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    """export=int4_merged: each deployed graph against fp32+LoRA and AWQ+LoRA (torch), and its speed."""
    rows = []
    for p in points:
        m, me = p["metrics"], p["measured"]
        rows.append([p["label"], "fp32+LoRA (torch)", fmt(m.get("ppl_fp32_lora")), "0", "–", "–", "–"])
        for key, name, speed in MERGED_ROWS:
            kl_awq = "0" if key == "awq_lora" else fmt(m.get(f"kl_awqlora_{key}"), 3)
            rows.append([p["label"], name, fmt(m.get(f"ppl_{key}")), fmt(m.get(f"kl_fp32lora_{key}"), 3), kl_awq,
                         fmt(me.get(f"{speed}_tokens_per_s"), 5) if speed else "–",
                         fmt(1000 * me[f"{speed}_ttft_s"], 3) if speed and f"{speed}_ttft_s" in me else "–"])
    return ("The adapter merged (export=int4_merged): held-out perplexity, mean per-token KL from fp32+LoRA and "
            "from AWQ+LoRA (torch), decode speed (one thread)",
            ["point", "model", "perplexity", "KL(fp32+LoRA‖·)", "KL(AWQ+LoRA‖·)", "tok/s", "TTFT ms"], rows)


def plot_losses(points, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        tr = [(int(r["step"]), float(r["train_loss"])) for r in p["curve"] if r["train_loss"]]
        ev = [(int(r["step"]), float(r["eval_loss"])) for r in p["curve"] if r["eval_loss"]]
        ax.plot(*zip(*tr), color=color, alpha=0.5, lw=1, label=f"{p['label']} train")
        ax.plot(*zip(*ev), color=color, marker="o", lw=2, label=f"{p['label']} eval")
    ax.set(xlabel="step", ylabel="loss (response tokens)", title="LoRA fine-tune on the int4 AWQ base")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_perplexity(points, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(points) + 3), 4))
    width = 0.8 / len(PPL_COLUMNS)
    for j, (k, name) in enumerate(PPL_COLUMNS):
        xs = [i + j * width for i in range(len(points))]
        ax.bar(xs, [p["metrics"].get(k, 0) for p in points], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(points))], [p["label"] for p in points], fontsize=8)
    ax.set(ylabel="held-out perplexity (lower is better)", title="What quantization cost, what fine-tuning bought")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(points, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for p in points:
        m = p["metrics"]
        size = (m["onnx_model_bytes"] + m["onnx_adapter_bytes"]) * MB
        axes[0].scatter(m["onnx_adapter_bytes"] * MB, m["ppl_onnx_lora"], s=60)
        axes[0].annotate(p["label"], (m["onnx_adapter_bytes"] * MB, m["ppl_onnx_lora"]), fontsize=7)
        speed = p["measured"].get("ort_int4_tokens_per_s")
        if speed:
            axes[1].scatter(speed, m["ppl_onnx_lora"], s=20 + 10 * size)
            axes[1].annotate(p["label"], (speed, m["ppl_onnx_lora"]), fontsize=7)
    axes[0].set(xlabel="adapter size (MB)", ylabel="ONNX int4+LoRA perplexity", title="quality vs size")
    axes[1].set(xlabel="decode tokens/s (ORT int4, 1 thread)", ylabel="ONNX int4+LoRA perplexity",
                title="quality vs speed (marker: model+adapter size)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_search_history(values: list[float], metric: str, direction: str, path: Path) -> None:
    """Objective per trial and the best so far."""
    pick = min if direction == "minimize" else max
    best = [pick(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(values)), values, "o", label="trial")
    ax.step(range(len(values)), best, where="post", label="best so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="finished trial", ylabel=metric, title=f"search: {direction} {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shared_artifacts(points) -> list[str]:
    lines = []
    for stage in ("base", "dataset", "quantize", "quality", "export", "finetune", "adapter", "merged"):
        if not all(stage in p["keys"] for p in points):
            continue  # a stage some configurations leave out (merged: export=int4_merged)
        keys = {p["keys"][stage] for p in points}
        lines.append(f"{stage}: {len(keys)} artifact(s) for {len(points)} point(s)")
    return lines


def markdown_tables(tbls) -> list[str]:
    """Captioned tables (from `tables`) as Markdown lines."""
    out = []
    for caption, cols, rows in tbls:
        out += [f"## {caption}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return out


def notes(points: list[dict]) -> list[str]:
    """What the numbers cannot tell: a difference smaller than its uncertainty on the held-out split."""
    out = []
    for p in points:
        m = p["metrics"]
        ci = m.get("ppl_awq_minus_rtn_ci95")
        if ci and ci[0] <= 0 <= ci[1]:
            out.append(f"{p['label']}: AWQ vs RTN perplexity differs by {m['ppl_awq_int4'] - m['ppl_rtn_int4']:+.3g}, "
                       f"inside its 95 % bootstrap interval over the {m.get('eval_records')} held-out records "
                       f"[{ci[0]:+.3g}, {ci[1]:+.3g}]: the split is too small to tell them apart by perplexity "
                       "(the KL from fp32 is the steadier measure)")
        kr, ka = m.get("kl_fp32lora_merged_rtn"), m.get("kl_fp32lora_merged_awq")
        if kr and ka is not None:
            out.append(f"{p['label']}: merged-AWQ's KL from fp32+LoRA is {ka / kr:.2f}x merged-RTN's ({ka:.3g} vs "
                       f"{kr:.3g}; the goal is at most 0.5x, as AWQ vs RTN on the base: "
                       f"{fmt(m.get('kl_awq_int4'), 3)} vs {fmt(m.get('kl_rtn_int4'), 3)})")
    return out


def document(title, points, best, metric, tbls, plots, shared) -> list[tuple]:
    """The report as blocks, rendered to Markdown and to HTML alike (the two carry the same content)."""
    blocks = [("h1", title), ("p", f"{len(points)} point(s). Best by `{metric}`: **{best['label']}** "
                                    f"({fmt(best['metrics'][metric])}).")]
    blocks += [("note", n) for n in notes(points)]
    blocks += [("table", caption, cols, rows) for caption, cols, rows in tbls]
    blocks += [("h2", "Plots"), *(("img", name, alt) for name, alt in plots)]
    blocks += [("h2", "Built once, shared"), ("list", shared), ("h2", "Sample generation per adapter")]
    for p in points:
        g = p["generation"]
        rate = p["generation_measured"].get("tokens_per_s")
        blocks += [("p", f"**{p['label']}** ({g['new_tokens']} tokens" + (f", {rate:.0f} tokens/s)" if rate else ")")),
                   ("pre", g["prompt"] + g["completion"])]
        if g.get("base_completion") is not None:
            blocks += [("p", "The same prompt, base model (no adapter):"), ("pre", g["base_completion"].strip())]
    return blocks


def markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out += [("# " if kind == "h1" else "## ") + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "note":
            out += [f"> **Note**: {b[1]}", ""]
        elif kind == "table":
            out += markdown_tables([b[1:]])
        elif kind == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
        elif kind == "list":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "pre":
            out += ["```", b[1], "```", ""]
    return "\n".join(out)


def html_page(blocks: list[tuple]) -> str:
    e = html.escape

    def inline(text: str) -> str:  # the Markdown the blocks use: **bold** and `code`
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(text))
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    parts = ["<!doctype html><meta charset='utf-8'>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "pre{background:#f5f5f5;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}"
             "blockquote{border-left:4px solid #e0a000;margin:0;padding:4px 12px;background:#fff8e0}</style>"]
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            parts += [f"<title>{e(b[1])}</title>", f"<h1>{e(b[1])}</h1>"]
        elif kind == "h2":
            parts.append(f"<h2>{e(b[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{inline(b[1])}</p>")
        elif kind == "note":
            parts.append(f"<blockquote><b>Note</b>: {inline(b[1])}</blockquote>")
        elif kind == "table":
            caption, cols, rows = b[1:]
            parts.append(f"<h2>{e(caption)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows]
            parts.append("</table>")
        elif kind == "img":
            parts.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
    return "\n".join(parts)


def build(node, out: Path, cfg) -> dict:
    r = node.config["report"]
    points = load_points(node)
    best = best_point(points, r["best_metric"], r["best_mode"])
    plots = [("losses.png", "training and eval loss"), ("perplexity.png", "perplexity per model"),
             ("tradeoff.png", "quality vs size vs speed")]
    plot_losses(points, out / plots[0][0])
    plot_perplexity(points, out / plots[1][0])
    plot_tradeoff(points, out / plots[2][0])
    tbls, shared = tables(points), shared_artifacts(points)
    blocks = document(r["title"], points, best, r["best_metric"], tbls, plots, shared)
    (out / "report.md").write_text(markdown(blocks))
    (out / "report.html").write_text(html_page(blocks))
    (out / "points.json").write_text(json.dumps([{k: p[k] for k in ("label", "metrics", "finetune", "keys")}
                                                 for p in points], indent=2))
    return {"points": len(points), "best": best["label"], "best_metric": r["best_metric"],
            "best_value": best["metrics"][r["best_metric"]]}
