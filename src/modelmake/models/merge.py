"""A LoRA adapter merged into a model's weights: W' = W + scale * B @ A, one dense fp32 model.

What the merged export (export=int4_merged) starts from, by either route: the adapter merged into
the dequantized AWQ weights (Olive's MergeAdapterWeights, then round-to-nearest int4), or into
the fp32 base (then AWQ again on the merged weights). PEFT's AWQ layers have no merge, so both
merge into dense weights. The adapter is checked against the model first: every tensor a LoRA
A/B pair of a module the model has, at the model's widths, at the rank its config says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.models.families import family_for_config, module_shapes
from modelmake.models.peft_patterns import pattern_value

_TENSOR = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def check_adapter(adapter_dir: Path, config: dict, field: str = "export.merge") -> dict:
    """Refuse, in one line naming `field`, an adapter that does not fit the model of `config`
    (config.json as a dict): a module the model lacks, a layer past its last, widths other than
    the module's, a rank other than the one its adapter_config.json gives. Returns its rank and targets."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise ModelmakeError(f"config field '{field}': {p} missing: the merged export needs the fine-tune's "
                                 "peft adapter (safetensors)")
    acfg = json.loads(cfg_path.read_text())
    if acfg.get("peft_type") != "LORA":
        raise ModelmakeError(f"config field '{field}': {cfg_path}: peft_type is {acfg.get('peft_type')!r}, "
                             "only LoRA adapters merge")
    family = family_for_config(config)
    shapes = {m.rsplit(".", 1)[-1]: s for m, s in module_shapes(family, config).items()}
    layers = int(config["num_hidden_layers"])
    rank = int(acfg["r"])
    patterns = acfg.get("rank_pattern") or {}
    seen: dict[tuple[int, str], set[str]] = {}
    with safe_open(str(weights), "np") as f:
        for name in f.keys():
            m = _TENSOR.match(name)
            if not m:
                raise ModelmakeError(f"config field '{field}': {weights}: tensor '{name}' is not a LoRA A/B "
                                     "weight of a decoder layer")
            layer, path, which = int(m.group(1)), m.group(2), m.group(3)
            module = path.rsplit(".", 1)[-1]
            where = f"{weights}: model.layers.{layer}.{path}"
            if module not in shapes:
                raise ModelmakeError(f"config field '{field}': {where}: the base ({family.architecture}) has no "
                                     f"module '{module}' (its projections: {sorted(shapes)})")
            if layer >= layers:
                raise ModelmakeError(f"config field '{field}': {where}: the base has {layers} layers")
            r = int(pattern_value(patterns, f"model.layers.{layer}.{path}", rank))
            in_f, out_f = shapes[module]
            want = (r, in_f) if which == "A" else (out_f, r)
            got = tuple(f.get_slice(name).get_shape())
            if got != want:
                raise ModelmakeError(f"config field '{field}': {where}: lora_{which} is {list(got)}, but the base's "
                                     f"{module} is [{in_f} -> {out_f}] and the adapter's rank is {r}: the adapter "
                                     "was not trained on this base")
            seen.setdefault((layer, path), set()).add(which)
    unpaired = sorted(f"model.layers.{k[0]}.{k[1]}" for k, v in seen.items() if v != {"A", "B"})
    if unpaired:
        raise ModelmakeError(f"config field '{field}': {weights}: {unpaired[0]} has one of lora_A/lora_B only")
    if not seen:
        raise ModelmakeError(f"config field '{field}': {weights}: holds no LoRA weights")
    return {"rank": rank, "targets": sorted({k[1].rsplit(".", 1)[-1] for k in seen}), "modules": len(seen)}


def merge_into(model_path: str | Path, adapter_dir: Path, out: Path, revision: str | None = None) -> dict:
    """Load `model_path` dense in fp32, merge the adapter (peft's merge_and_unload: W += scale * B @ A),
    save it with its tokenizer to `out`. Returns the merged modules' count."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"revision": revision} if revision else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **kw).eval()
    lora = PeftModel.from_pretrained(model, str(adapter_dir))
    modules = sum(1 for n, _ in lora.named_modules() if n.endswith(".lora_A"))
    merged = lora.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_path, **kw).save_pretrained(out)
    return {"merged_modules": modules}
