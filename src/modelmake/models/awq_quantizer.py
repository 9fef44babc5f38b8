"""AutoAWQ's quantizer with the fixes that concern quantizing alone (see `awq_fixes` for the list):
fix 1, the scale search restores real copies of the weights; fix 6, the clip search as batched
matrix products; and a count of both searches' floating-point work. Kept apart from the loading
fixes so that the quantize stage's key moves only when quantizing code does.
"""

from __future__ import annotations

import warnings

import torch

with warnings.catch_warnings():  # AutoAWQ prints a deprecation banner on import
    warnings.simplefilter("ignore")
    from awq.quantize.quantizer import AwqQuantizer


def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


class SafeAwqQuantizer(AwqQuantizer):
    """AwqQuantizer whose scale search restores the real original weights after each grid point
    (fix 1), whose clip search runs as batched matrix products (fix 6), and which counts the
    floating-point work of both searches, so a run can be set against the machine's GEMM speed."""

    N_GRID = 20  # AutoAWQ's grid for both searches (its code has it as a literal)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_flops = {"scale": 0.0, "clip": 0.0}

    def _search_best_scale(self, module, prev_op, layers, inp, module2inspect=None, kwargs={}):
        inspected = module2inspect if module2inspect is not None else layers[0]
        tokens = inp.numel() // inp.shape[-1]
        # one reference forward + one per grid point, each ~2 FLOPs per weight per token
        self.search_flops["scale"] += (self.N_GRID + 1) * 2.0 * tokens * _linear_params(inspected)
        return super()._search_best_scale(module, prev_op, layers, inp, module2inspect, kwargs)

    def _compute_best_scale(self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs={}):
        original = module2inspect.state_dict

        def cloned_state_dict(*args, **kw):
            return {k: v.detach().clone() for k, v in original(*args, **kw).items()}

        module2inspect.state_dict = cloned_state_dict  # shadows the method on this instance only
        try:
            return super()._compute_best_scale(
                x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs
            )
        finally:
            del module2inspect.state_dict


    @torch.no_grad()
    def _compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
        """AutoAWQ's clip search, same grid and same error, with each group's output computed as a
        batched matrix product instead of a broadcast multiply-and-sum: upstream materializes a
        [out, tokens, groups, group_size] tensor per grid point, memory-bound on CPU (~20 s of a
        SmolLM2 layer's 28 s); `torch.bmm` does the same FLOPs at GEMM speed."""
        assert w.dim() == 2
        out_f, in_f = w.shape
        gs = self.group_size if self.group_size > 0 else in_f
        x = input_feat.reshape(-1, in_f)
        x = x[:: max(1, x.shape[0] // n_sample_token)]                   # the same tokens upstream samples
        xg = x.reshape(x.shape[0], -1, gs).transpose(0, 1).contiguous()  # [groups, tokens, gs]
        wg = w.reshape(out_f, -1, gs)                                    # [out, groups, gs]
        org_max = wg.abs().amax(dim=-1, keepdim=True)                    # [out, groups, 1]
        org_out = torch.bmm(xg, wg.permute(1, 2, 0))                     # [groups, tokens, out]
        best_max = org_max.clone()
        min_errs = torch.full_like(org_max, 1e9)
        shrinks = int(max_shrink * n_grid)
        for i_s in range(shrinks):
            max_val = org_max * (1 - i_s / n_grid)
            q_w = self.pseudo_quantize_tensor(torch.clamp(wg, -max_val, max_val).reshape(out_f, in_f))[0]
            cur_out = torch.bmm(xg, q_w.reshape(out_f, -1, gs).permute(1, 2, 0))
            err = (cur_out - org_out).pow(2).mean(dim=1).T.unsqueeze(-1)  # [out, groups, 1]
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        self.search_flops["clip"] += (shrinks + 1) * 2.0 * x.shape[0] * out_f * in_f
        return best_max  # [out, groups, 1], as upstream returns it


@torch.no_grad()
def rtn_quantize_(model, w_bit: int, group_size: int, zero_point: bool) -> None:
    """Round-to-nearest int4 of every decoder linear, in place (weights stay dense, dequantized):
    the baseline AWQ is measured against, with AutoAWQ's own group quantizer and no scaling."""
    q = object.__new__(AwqQuantizer)  # only its quantize-a-tensor math, no calibration state
    q.w_bit, q.group_size, q.zero_point = w_bit, group_size, zero_point
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = q.pseudo_quantize_tensor(module.weight.data)[0]
