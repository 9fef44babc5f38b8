"""A GGUF file (llama.cpp's format) as a plain Hugging Face safetensors folder, through
transformers' GGUF reader (which dequantizes on load)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import torch

from modelmake.core.errors import ModelmakeError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers reads a GGUF's header three times (tokenizer, config, weights: ~5 s each for
    SmolLM2's 49k-token vocabulary) and builds gguf's tensor-name map anew for each tensor (397
    times, ~6 s): 20 of this stage's 28 s. Inside this block each is built once; both are pure
    reads of the file, so what they return is unchanged."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def read_once(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@torch.no_grad()
def dequantize_gguf(gguf: Path, out: Path, dtype: str, threads: int) -> dict:
    """A GGUF file as a plain HF safetensors folder (model + tokenizer + chat template).

    transformers dequantizes GGUF tensors on load but marks the model as GGUF-quantized and
    refuses to save it; a fresh model built from the same config takes the state dict whole.
    """
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch_dtype = getattr(torch, dtype)
    with warnings.catch_warnings(), _gguf_parsed_once():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the folder holds plain weights, not GGUF blocks
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    state = {k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]:
        raise ModelmakeError(f"{gguf}: weights do not match {type(model).__name__} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    if not tok.chat_template:
        log.warning("%s: the GGUF carries no chat template (data.template=chat will be refused)", gguf.name)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source_file": gguf.name, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype,
            "vocab_size": config.vocab_size, "num_hidden_layers": config.num_hidden_layers}
