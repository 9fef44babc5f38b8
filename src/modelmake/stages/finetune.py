"""The finetune stage: LoRA (peft) on the int4 AWQ base, QLoRA-style.

The base stays int4 (`WQLinear_GEMM` buffers, no gradient); only LoRA's A and B train. Loss is
on the response tokens only (the prompt part of the template is masked); batches are right
padded (left padding diverged in trials). An optimizer step takes `train.grad_accum_steps`
micro-batches of `train.batch_size` records, with the gradient of one batch of all of them, then
clips its norm to `train.max_grad_norm` (null: no clipping). Train and eval loss are recorded; the
adapter is saved as `adapter_config.json` + `adapter_model.safetensors`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from modelmake.core.errors import ModelmakeError
from modelmake.models.awq_fixes import load_awq_model
from modelmake.models.families import family_for_config, resolve_lora_targets
from modelmake.stages.layout import read_split

log = logging.getLogger(__name__)
IGNORE = -100


def stop_ids(tok, config) -> set[int]:
    """The token ids that end the model's turn: its config's eos ids and the tokenizer's."""
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    return {i for i in ids if i is not None}


def encode(tok, items: list[dict], max_len: int, stops: set[int] = frozenset(),
           source: str = "dataset") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per item; labels mask the prompt and keep the response. A response that
    holds none of the `stops` (a text template with no end marker, e.g. `### The tone is:\n{tone}`)
    gets the first stop token appended, so the model learns to end its answer there."""
    out = []
    for it in items:
        ids = tok(it["text"], add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(it["prompt"], add_special_tokens=False)["input_ids"]) if it["prompt"] else 0
        if stops and not set(ids[n_prompt:]) & stops:
            ids = ids + [tok.eos_token_id if tok.eos_token_id in stops else min(stops)]
        ids = ids[:max_len]
        labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
        if all(x == IGNORE for x in labels):
            raise ModelmakeError(
                f"{source}:{it['line']}: no response tokens left within train.max_seq_len={max_len}"
            )
        out.append((ids, labels))
    return out


def collate(batch, pad_id: int):
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):  # right padding
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, mask, labels


@torch.no_grad()
def mean_loss(model, examples, pad_id: int, batch_size: int) -> float:
    """Token-weighted mean cross-entropy over `examples`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, mask, labels = collate(examples[i : i + batch_size], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        total += loss.item()
        count += (target != IGNORE).sum().item()
    return total / max(count, 1)


def batches(n: int, batch_size: int, seed: int):
    """Endless seeded epochs of shuffled indices."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g).tolist()
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def lora_model(base, lora_cfg):
    """peft LoRA on `base`; `lora.target_modules: auto` is every projection of the model's family."""
    from peft import LoraConfig, get_peft_model

    family = family_for_config(base.config.to_dict())
    targets = resolve_lora_targets(lora_cfg.target_modules, family)
    config = LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(base, config)
    except ValueError as e:  # peft names the missing target modules
        raise ModelmakeError(f"lora.target_modules={targets}: {e}") from None


def response_tokens(labels: torch.Tensor) -> int:
    """The tokens a batch's loss is taken over: labels after the causal shift, prompt masked."""
    return int((labels[:, 1:] != IGNORE).sum())


def accumulate(model, micro_batches: list, pad_id: int, step: int, lr: float) -> float:
    """Backward over one optimizer step's micro-batches, each a list of (ids, labels); returns the
    step's loss. Each micro-batch's mean loss is weighted by its share of the step's response
    tokens, so the summed gradient is that of one batch of all of them (right padding changes no
    real token's logits); with one micro-batch the weight is exactly 1."""
    batches = [collate(mb, pad_id) for mb in micro_batches]
    total = sum(response_tokens(labels) for _, _, labels in batches)
    step_loss = 0.0
    for ids, mask, labels in batches:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise ModelmakeError(f"finetune: loss is {loss.item()} at step {step} (train.lr={lr} too high?)")
        weight = response_tokens(labels) / max(total, 1)
        (loss * weight).backward()
        step_loss += loss.item() * weight
    return step_loss


def train(model, train_ex, eval_ex, t, pad_id: int, log_path: Path) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def lr_at(step):
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    eval0 = mean_loss(model, eval_ex, pad_id, t.batch_size)
    history = [{"step": 0, "train_loss": "", "eval_loss": eval0, "lr": 0.0}]
    it = batches(len(train_ex), t.batch_size, t.seed)
    bar = tqdm(range(1, t.steps + 1), desc="finetune", mininterval=2)
    train_seconds = 0.0
    with log_path.open("w", newline="") as logf:
        writer = csv.DictWriter(logf, fieldnames=["step", "train_loss", "eval_loss", "lr"])
        writer.writeheader()
        writer.writerow(history[0])
        for step in bar:
            model.train()
            t0 = time.perf_counter()
            micro = [[train_ex[i] for i in next(it)] for _ in range(t.grad_accum_steps)]
            loss = accumulate(model, micro, pad_id, step, t.lr)
            if t.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - t0  # the step alone, not the periodic evaluation
            row = {"step": step, "train_loss": loss, "eval_loss": "", "lr": sched.get_last_lr()[0]}
            if step % t.eval_every == 0 or step == t.steps:
                row["eval_loss"] = mean_loss(model, eval_ex, pad_id, t.batch_size)
            history.append(row)
            writer.writerow(row)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    train_tail = [h["train_loss"] for h in history[1:]][-10:]
    return {
        "eval_loss_before": eval0,
        "eval_loss": history[-1]["eval_loss"],
        "train_loss": sum(train_tail) / len(train_tail),
        "eval_perplexity_before": math.exp(eval0),
        "eval_perplexity": math.exp(history[-1]["eval_loss"]),
        "seconds_per_step": train_seconds / t.steps,
    }


def build(node, out: Path, cfg) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.train.seed)
    qdir = node.inputs["quantize"].path / "model"
    ddir = node.inputs["dataset"].path
    tok = AutoTokenizer.from_pretrained(qdir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    base = load_awq_model(qdir, dtype=torch.float32)
    stops = stop_ids(tok, base.config)
    model = lora_model(base, cfg.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t = cfg.train
    train_ex = encode(tok, read_split(ddir, "train"), t.max_seq_len, stops, cfg.data.path)
    eval_ex = encode(tok, read_split(ddir, "eval"), t.max_seq_len, stops, cfg.data.path)
    metrics = train(model, train_ex, eval_ex, t, pad_id, out / "train_log.csv")
    model.save_pretrained(out / "adapter", safe_serialization=True)
    sort_target_modules(out / "adapter" / "adapter_config.json")
    measured = {"seconds_per_step": metrics.pop("seconds_per_step")}  # of this machine: the journal's
    return metrics | {"trainable_parameters": trainable, "measured": measured}


def sort_target_modules(path: Path) -> None:
    """peft writes `target_modules` from a set, in an order that follows the process's string hash
    seed: two builds of one key differed in this file alone (found by the fault suite). Sorted, the
    artifact is reproducible byte for byte."""
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
