"""One test per AutoAWQ CPU trap (see modelmake.awq_fixes): each fails if its fix is removed."""

import json

import pytest
import torch

from modelmake.models import awq_fixes
from modelmake.models.awq_fixes import (
    WQLinear_GEMM,
    dequantize_gemm,
    dequantized_weight,
    load_awq_model,
    use_torch_int4_matmul,
)
from modelmake.models.awq_quantizer import AwqQuantizer, SafeAwqQuantizer


def quantized_linear(in_f=128, out_f=64, group=64, seed=0):
    """A real AWQ GEMM layer packed by AutoAWQ itself from a random Linear."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=False).half()
    q = object.__new__(AwqQuantizer)
    q.w_bit, q.group_size, q.zero_point = 4, group, True
    w, scales, zeros = q.pseudo_quantize_tensor(lin.weight.data)
    lin.weight.data = w
    return WQLinear_GEMM.from_linear(lin, 4, group, scales=scales.t().contiguous(), zeros=zeros.t().contiguous()), w


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(128, 128, bias=False)

    def forward(self, x):
        return self.fc(x)


def _scale_search(cls):
    torch.manual_seed(0)
    block = Block()
    q = object.__new__(cls)
    q.w_bit, q.group_size, q.zero_point, q.duo_scaling, q.max_chunk_memory = 4, 64, True, True, 1 << 30
    q.n_parallel_calib_samples = None
    x = torch.randn(4, 16, 128)
    before = block.fc.weight.detach().clone()
    with torch.no_grad():
        out = block(x)
        q._compute_best_scale(x, before.abs().mean(0), x.abs().view(-1, 128).mean(0), block, [block.fc], out, {})
    return before, block.fc.weight.detach()


def test_fix1_scale_search_leaves_the_weights_as_they_were():
    before, after = _scale_search(SafeAwqQuantizer)
    assert torch.equal(before, after)


def test_fix1_is_still_needed_upstream_corrupts_weights_on_cpu():
    before, after = _scale_search(AwqQuantizer)
    assert not torch.allclose(before, after), "AutoAWQ fixed its CPU restore: SafeAwqQuantizer can go"


def test_fix2_cpu_forward_never_takes_the_triton_path(monkeypatch):
    import awq.modules.linear.gemm as gemm

    def boom(*a, **k):
        raise RuntimeError("triton kernel called on CPU")

    monkeypatch.setattr(gemm, "TRITON_AVAILABLE", True)
    monkeypatch.setattr(gemm, "awq_dequantize_triton", boom, raising=False)
    monkeypatch.setattr(gemm, "awq_gemm_triton", boom, raising=False)
    use_torch_int4_matmul()
    layer, w = quantized_linear()
    x = torch.randn(2, 5, 128)
    torch.testing.assert_close(layer(x), x @ w.float().T, rtol=2e-3, atol=2e-3)


def test_fix3_backward_matches_an_fp32_dequantized_reference():
    use_torch_int4_matmul()
    layer, _ = quantized_linear()
    dense = dequantized_weight(layer)
    x1 = torch.randn(3, 7, 128, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(3, 7, 64)
    (layer(x1) * g).sum().backward()
    (x2 @ dense * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert all(not b.requires_grad for b in layer.buffers())  # the int4 base gets no gradient


def test_fix3_is_still_needed_upstream_backward_needs_kernels(monkeypatch):
    monkeypatch.setattr(WQLinear_GEMM, "forward", awq_fixes._original_forward)
    layer, _ = quantized_linear()
    layer.training = True
    x = torch.randn(1, 3, 128, requires_grad=True)
    with pytest.raises((ValueError, RuntimeError)):
        layer(x).sum().backward()


def test_fix4_and_5_loader_needs_no_ipex_and_keeps_scales_fp16(tmp_path):
    from safetensors.torch import save_file
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                        pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    dense = Phi3ForCausalLM(config).eval()
    state = {k: v for k, v in dense.state_dict().items()}
    for name in ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]:
        lin = dense.model.layers[0].get_submodule(name)
        q, w = quantized_linear(lin.in_features, lin.out_features, 64, seed=1)
        lin.weight.data = w.float()
        del state[f"model.layers.0.{name}.weight"]
        for b in ("qweight", "qzeros", "scales"):
            state[f"model.layers.0.{name}.{b}"] = getattr(q, b)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    cfg = config.to_dict() | {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64,
                                                       "version": "gemm", "zero_point": True}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = load_awq_model(tmp_path)
    scales = [b for n, b in model.named_buffers() if n.endswith("scales")]
    assert scales and all(s.dtype == torch.float16 for s in scales)
    assert model.lm_head.weight.dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-3, atol=1e-3)


def _quantizer(cls=SafeAwqQuantizer):
    q = object.__new__(cls)
    q.w_bit, q.group_size, q.zero_point, q.search_flops = 4, 64, True, {"scale": 0.0, "clip": 0.0}
    return q


def test_fix6_batched_clip_search_finds_upstreams_clip_values():
    """Same grid, same sampled tokens, same error: the same best clip per group (activations with
    outlier channels, as real models have), only at GEMM speed; and its FLOPs are counted."""
    torch.manual_seed(0)
    w = torch.randn(192, 256) * 0.02
    x = torch.randn(2, 700, 256)
    x[..., :4] *= 30
    q = _quantizer()
    ours = q._compute_best_clip(w, x)
    theirs = AwqQuantizer._compute_best_clip(q, w, x)
    assert ours.shape == theirs.shape == (192, 4, 1)
    assert torch.equal(ours, theirs)
    tokens = 1400 // (1400 // 512)
    assert q.search_flops["clip"] == 11 * 2.0 * tokens * 192 * 256


def test_dequantized_weight_is_upstreams_fp16_result_kept_on_the_layer():
    layer, _ = quantized_linear()
    first = dequantized_weight(layer)
    reference = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, 4, 64).float()
    assert torch.equal(first, reference)
    assert "_modelmake_w16" not in layer.state_dict() and layer._modelmake_w16.dtype == torch.float16
