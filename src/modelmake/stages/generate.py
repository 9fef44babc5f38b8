"""Streaming generation through onnxruntime-genai with a named adapter active.

Used by the generate stage (the cookbook's travel question by default) and by
`modelmake generate` for a user's own prompt and adapter.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from modelmake.core.errors import ModelmakeError


def stream(model_dir: Path, text: str, adapter: Path | None = None, max_new_tokens: int = 64,
           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
           out: TextIO | None = sys.stdout) -> dict:
    """Generate from `text`, printing tokens as they come; return text, counts and timings."""
    import onnxruntime_genai as og

    if not (Path(model_dir) / "genai_config.json").exists():
        raise ModelmakeError(f"{model_dir}: not an onnxruntime-genai model folder (no genai_config.json)")
    model = og.Model(str(model_dir))
    tok = og.Tokenizer(model)
    ids = tok.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=do_sample,
                              temperature=temperature, top_p=top_p)
    gen = og.Generator(model, params)
    if adapter is not None:
        if not Path(adapter).is_file():
            raise ModelmakeError(f"{adapter}: adapter file not found")
        adapters = og.Adapters(model)
        adapters.load(str(adapter), "active")
        gen.set_active_adapter(adapters, "active")
    decoder = tok.create_stream()
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    first = None
    pieces, n = [], 0
    while not gen.is_done():
        gen.generate_next_token()
        if first is None:
            first = time.perf_counter() - t0
        token = gen.get_next_tokens()[0]
        n += 1
        piece = decoder.decode(token)
        pieces.append(piece)
        if out is not None:
            out.write(piece)
            out.flush()
    seconds = time.perf_counter() - t0
    if out is not None:
        out.write("\n")
    return {"prompt": text, "completion": "".join(pieces), "new_tokens": n, "seconds": seconds,
            "time_to_first_token_s": first, "tokens_per_s": n / seconds if seconds > 0 else None}


def build(node, out: Path, cfg) -> dict:
    from modelmake.data.templates import prompt_text
    from modelmake.stages.layout import MODEL_DIR, load_template
    from modelmake.stages.merged_layout import deployed

    g = cfg.generate
    text = prompt_text(*load_template(node.inputs["dataset"].path), g.prompt)
    base_dir = node.inputs["export"].path / MODEL_DIR
    model_dir, adapter = deployed(node.inputs, cfg.export.merge)
    tuned = (model_dir, adapter, "adapter active" if adapter else f"merged graph ({cfg.export.merge}), no adapter file")
    runs = {}
    # the fine-tuned answer next to the base model's: the base graph with no adapter
    for name, (model_dir, adapter, label) in (("adapter", tuned), ("base", (base_dir, None, "base model, no adapter"))):
        print(f"--- prompt ---\n{text}--- completion ({label}) ---", flush=True)
        runs[name] = stream(model_dir, text, adapter, g.max_new_tokens, g.do_sample, g.temperature, g.top_p)
        print(f"--- {runs[name]['new_tokens']} tokens, {runs[name]['tokens_per_s']:.0f} tokens/s ---", flush=True)
    timing = ("seconds", "tokens_per_s", "time_to_first_token_s")  # of this machine: the journal's
    result = {k: v for k,
              v in runs["adapter"].items() if k not in timing} | {"base_completion": runs["base"]["completion"]}
    if "merged" in node.inputs:
        result["merged_route"] = cfg.export.merge
    (out / "generation.json").write_text(json.dumps(result, indent=2))
    (out / "generation.txt").write_text(
        f"{g.prompt}\n\n[fine-tuned]\n{runs['adapter']['completion'].strip()}\n\n"
        f"[base model]\n{runs['base']['completion'].strip()}\n")
    return {"new_tokens": result["new_tokens"], "measured": {k: runs["adapter"][k] for k in timing}}
