"""A small Hugging Face model folder made in a second (a random two-layer Phi-3 with the tiny
fixture's tokenizer), for tests of model sources that need a real folder but no build."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.project import REPO


def hf_folder(dst: Path, **config) -> Path:
    """Write a random Phi3ForCausalLM (hidden 64, 2 layers) with a trained BPE tokenizer into `dst`;
    `config` overrides entries of its config.json afterwards (as a user's edited folder would)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from modelmake.models.tiny import corpus_texts, hf_tokenizer, train_tokenizer

    tok = hf_tokenizer(train_tokenizer(corpus_texts(REPO / "data" / "travel_sample.jsonl")[:200], 600, 2))
    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                       original_max_position_embeddings=256,  # not LongRoPE (the builder's multi_cache)
                                       eos_token_id=[tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id],
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id))
    model.save_pretrained(dst, safe_serialization=True)
    tok.save_pretrained(dst)
    if config:
        path = Path(dst) / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config, indent=2))
    return Path(dst)


def max_relative_diff(stage: str, a: Path, b: Path) -> float:
    """The largest difference between two trained artifacts' tensors, relative to the largest value."""
    if stage == "finetune":
        from safetensors.numpy import load_file

        x, y = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (a, b))
    else:
        import onnxruntime as ort

        def read(path: Path) -> dict:
            fmt = ort.AdapterFormat.read_adapter(str(path / "adapter.onnx_adapter"))  # (kept alive while copied)
            return {k: v.numpy().copy() for k, v in fmt.get_parameters().items()}

        x, y = read(a), read(b)
    assert set(x) == set(y) and all(x[k].shape == y[k].shape for k in x)
    return max(float(abs(x[k] - y[k]).max() / max(abs(y[k]).max(), 1e-12)) for k in x)
