"""The fine-tune loop's gradient accumulation and clipping, on a tiny random causal LM (no build):
two micro-batches of 4 give the gradient of one batch of 8; `train.steps` counts optimizer steps."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from modelmake.stages.finetune import IGNORE, accumulate, train


@pytest.fixture(scope="module")
def model():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    cfg = Phi3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                     pad_token_id=0, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    return Phi3ForCausalLM(cfg).float().eval()  # no dropout: the two routes see the same function


def examples(n: int, seed: int = 1) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of different lengths and prompt lengths, as finetune.encode makes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        n_prompt = int(torch.randint(1, length - 2, (1,), generator=g))
        ids = torch.randint(1, 97, (length,), generator=g).tolist()
        out.append((ids, [IGNORE] * n_prompt + ids[n_prompt:]))
    return out


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_two_micro_batches_of_4_give_the_gradient_of_one_batch_of_8(model):
    ex = examples(8)
    loss8 = accumulate(model, [ex], pad_id=0, step=1, lr=1e-3)
    whole = grads(model)
    loss44 = accumulate(model, [ex[:4], ex[4:]], pad_id=0, step=1, lr=1e-3)
    split = grads(model)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert loss44 == pytest.approx(loss8, rel=1e-5)
    # the weighting matters: the plain mean of the two micro-batch means is another gradient
    accumulate(model, [ex[:4]], pad_id=0, step=1, lr=1e-3)
    first = grads(model)
    accumulate(model, [ex[4:]], pad_id=0, step=1, lr=1e-3)
    second = grads(model)
    name = next(iter(whole))
    assert not torch.allclose((first[name] + second[name]) / 2, whole[name], rtol=1e-4, atol=1e-6)


def test_one_micro_batch_is_the_models_own_loss(model):
    ex = examples(4, seed=2)
    from modelmake.stages.finetune import collate

    ids, mask, labels = collate(ex, 0)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert accumulate(model, [ex], pad_id=0, step=1, lr=1e-3) == expected
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_steps_count_optimizer_steps_with_accumulation(model, tmp_path, max_grad_norm):
    """3 steps of 2 micro-batches: 3 optimizer steps (3 learning rates logged), 6 micro-batches drawn."""
    t = OmegaConf.create({"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1, "steps": 3, "batch_size": 2,
                          "grad_accum_steps": 2, "max_grad_norm": max_grad_norm, "eval_every": 10, "seed": 0})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = train(model, examples(12, seed=3), examples(4, seed=4), t, 0, tmp_path / "log.csv")
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 3  # header, step 0 (eval only), 3 optimizer steps
    assert [r.split(",")[0] for r in rows[2:]] == ["1", "2", "3"]
    assert metrics["eval_loss"] > 0
    with torch.no_grad():  # leave the module's model as it was for the other tests
        for n, p in model.named_parameters():
            p.copy_(before[n])
    model.eval()
