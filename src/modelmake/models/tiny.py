"""The tiny Phi-3 fixture, made here deterministically from its config and seed: a byte-level BPE
tokenizer trained with `tokenizers` on the project's own sample data (Phi-3 chat special tokens
and chat template), a `Phi3ForCausalLM` of a few MB, pre-trained briefly on plain text so its
output is not noise. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from modelmake.core.errors import ModelmakeError
from modelmake.models.chat_formats import PHI3_CHAT_TEMPLATE, PHI3_SPECIAL_TOKENS, PHI3_STOP_TOKENS


def corpus_texts(path: Path) -> list[str]:
    """Plain text for the tokenizer and pre-training: prompts and responses, no chat template.

    The chat format is left for the fine-tune to teach, so fine-tuning has something to buy.
    """
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                texts.extend(str(v) for v in rec.values())
    if not texts:
        raise ModelmakeError(f"{path}: the pre-training corpus is empty")
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int):
    """A GPT-2 style byte-level BPE: any text encodes (no unknown token), and its pre-tokenizer
    splits punctuation and digits the way onnxruntime-genai's tokenizer does (ids match HF's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=PHI3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=PHI3_SPECIAL_TOKENS[1:],
        model_max_length=4096,
    )
    hf.chat_template = PHI3_CHAT_TEMPLATE
    return hf


def padded_vocab(n_tokens: int, multiple: int, projection_sizes: set[int]) -> int:
    """Round the vocab up (as Phi-3.5 pads 32011 -> 32064), and away from every projection's
    output size: the ORT-genai builder treats any Linear of vocab width as the LM head."""
    v = math.ceil(n_tokens / multiple) * multiple
    while v in projection_sizes:
        v += multiple
    return v


def projection_sizes(arch) -> set[int]:
    head_dim = arch.hidden_size // arch.num_attention_heads
    qkv = (arch.num_attention_heads + 2 * arch.num_key_value_heads) * head_dim
    return {arch.hidden_size, qkv, 2 * arch.intermediate_size}


def phi3_config(arch, vocab_size: int, tokenizer):
    from transformers import Phi3Config

    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in PHI3_STOP_TOKENS]
    return Phi3Config(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        original_max_position_embeddings=arch.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def pack_sequences(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate documents (separated by <|endoftext|>) and cut into equal blocks."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if n == 0:
        raise ModelmakeError(f"pre-training corpus has {len(ids)} tokens, fewer than seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def pretrain(model, blocks: torch.Tensor, cfg, seed: int) -> list[float]:
    """A short causal-LM pre-training so the tiny model's text is not noise."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * max(0.1, 1 - s / cfg.steps)
    )
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="pre-train", mininterval=2)
    for _ in bar:
        idx = torch.randint(0, blocks.shape[0], (cfg.batch_size,), generator=g)
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses


@torch.no_grad()
def add_outlier_channels(model, n_channels: int, factor: float, seed: int) -> list[int]:
    """Make a few input channels of every normed linear `factor` times larger, preserving the
    function: divide the RMSNorm weight's channel, multiply the next linear's input column.

    Round-to-nearest int4 then loses those channels' small weights in their groups, while AWQ's
    activation-aware scaling can undo it: a miniature of what real LLM activations look like.
    """
    if n_channels <= 0:
        return []
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    channels = torch.randperm(hidden, generator=g)[:n_channels].tolist()
    for layer in model.model.layers:
        for norm, linear in ((layer.input_layernorm, layer.self_attn.qkv_proj),
                             (layer.post_attention_layernorm, layer.mlp.gate_up_proj)):
            norm.weight[channels] *= factor
            linear.weight[:, channels] /= factor
    return channels


def build_tiny(cfg, corpus: Path, out: Path, threads: int) -> dict:
    """Train the tokenizer, build and pre-train the tiny Phi-3, save it as a HF folder."""
    from transformers import GenerationConfig, Phi3ForCausalLM

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    texts = corpus_texts(corpus)
    tok = hf_tokenizer(train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency))
    arch = cfg.architecture
    if arch.hidden_size % arch.num_attention_heads:
        raise ModelmakeError(
            f"model.architecture.hidden_size={arch.hidden_size} is not divisible by "
            f"num_attention_heads={arch.num_attention_heads}"
        )
    vocab = padded_vocab(len(tok), arch.pad_vocab_to, projection_sizes(arch))
    config = phi3_config(arch, vocab, tok)
    model = Phi3ForCausalLM(config)
    blocks = pack_sequences(tok, texts, cfg.pretrain.seq_len)
    losses = pretrain(model, blocks, cfg.pretrain, cfg.seed)
    channels = add_outlier_channels(model, cfg.outliers.channels, cfg.outliers.factor, cfg.seed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "tokenizer_tokens": len(tok),
        "vocab_size": vocab,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_loss_first": losses[0],
        "pretrain_loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "outlier_channels": channels,
    }
