"""Multi-LoRA for onnxruntime-genai graphs: LoRA weights as optional graph inputs, adapters as files.

The ORT-genai builder can only bake one adapter into a graph (and not at all with an AWQ
checkpoint), so this module does the two halves itself:

- `add_lora_inputs` rewrites a built graph: around every target projection (`MatMul` or
  `MatMulNBits`) it adds `Y += (X @ A) @ B`, where `A` [in, r] and `B` [r, out] are graph inputs
  with a symbolic rank and an *empty* default (r = 0). With no adapter active the branch adds
  exactly zero, so the model is exactly the base; one graph serves every adapter.
- `write_adapter` turns a peft adapter into an `.onnx_adapter` (onnxruntime's AdapterFormat),
  checking every parameter's name, shape and rank against the graph before anything is written.

Naming: the input for peft module `model.layers.3.mlp.down_proj` is
`lora.layers.3.mlp.down_proj.A` / `.B`. LoRA's scaling (alpha / r) is folded into B.
Where the builder splits one HF projection into several graph nodes (Phi-3's `gate_up_proj`
becomes `gate_proj` and `up_proj`), B is sliced by the nodes' output widths, in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from modelmake.errors import ModelmakeError

RANK_DIM = "lora_rank"
# HF module name (under model.layers.N.) -> graph node paths (under /model/layers.N/), tried in order.
GRAPH_NODES = {
    "self_attn.qkv_proj": [["attn/qkv_proj"], ["attn/q_proj", "attn/k_proj", "attn/v_proj"]],
    "self_attn.q_proj": [["attn/q_proj"]],
    "self_attn.k_proj": [["attn/k_proj"]],
    "self_attn.v_proj": [["attn/v_proj"]],
    "self_attn.o_proj": [["attn/o_proj"]],
    "mlp.gate_up_proj": [["mlp/gate_up_proj"], ["mlp/gate_proj", "mlp/up_proj"]],
    "mlp.gate_proj": [["mlp/gate_proj"]],
    "mlp.up_proj": [["mlp/up_proj"]],
    "mlp.down_proj": [["mlp/down_proj"]],
}
_PROJ_OPS = {"MatMul", "MatMulNBits"}


def input_names(layer: int, module: str) -> tuple[str, str]:
    base = f"lora.layers.{layer}.{module}"
    return f"{base}.A", f"{base}.B"


@dataclass
class _Proj:
    node: onnx.NodeProto
    in_features: int
    out_features: int


def _proj_nodes(graph: onnx.GraphProto) -> dict[str, _Proj]:
    inits = {i.name: i for i in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type not in _PROJ_OPS:
            continue
        m = re.match(r"^/model/layers\.(\d+)/(.+)/(MatMul|MatMulNBits)$", node.name)
        if not m:
            continue
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            k, n = attrs["K"], attrs["N"]
        else:
            w = inits.get(node.input[1])
            if w is None:
                continue
            k, n = w.dims
        found[f"{m.group(1)}/{m.group(2)}"] = _Proj(node, int(k), int(n))
    return found


def _activation_dtype(graph: onnx.GraphProto) -> int:
    for out in graph.output:
        if out.name == "logits":
            return out.type.tensor_type.elem_type
    raise ModelmakeError("graph has no 'logits' output: not an ORT-genai decoder graph")


def add_lora_inputs(model: onnx.ModelProto, num_layers: int, targets: list[str]) -> dict:
    """Insert optional LoRA branches for `targets` (e.g. `self_attn.qkv_proj`) in every layer.

    Returns the LoRA spec: {"dtype": ..., "inputs": {name: {"shape": [in, "lora_rank"], "module": ...}}}.
    """
    graph = model.graph
    dtype = _activation_dtype(graph)
    projs = _proj_nodes(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    after: dict[str, list[onnx.NodeProto]] = {}
    inputs: dict[str, dict] = {}
    for layer in range(num_layers):
        for target in targets:
            if target not in GRAPH_NODES:
                raise ModelmakeError(
                    f"export.lora_targets: unknown module '{target}'; known: {sorted(GRAPH_NODES)}"
                )
            nodes = next(
                ([projs[f"{layer}/{p}"] for p in paths]
                 for paths in GRAPH_NODES[target] if all(f"{layer}/{p}" in projs for p in paths)),
                None,
            )
            if nodes is None:
                raise ModelmakeError(f"graph has no projection node for model.layers.{layer}.{target}")
            in_f = nodes[0].in_features
            out_f = sum(p.out_features for p in nodes)
            a_name, b_name = input_names(layer, target)
            prefix = f"/lora/layers.{layer}/{target}"
            graph.input.extend([
                helper.make_tensor_value_info(a_name, dtype, [in_f, RANK_DIM]),
                helper.make_tensor_value_info(b_name, dtype, [RANK_DIM, out_f]),
            ])
            np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
            graph.initializer.extend([
                numpy_helper.from_array(np.zeros((in_f, 0), np_dtype), a_name),
                numpy_helper.from_array(np.zeros((0, out_f), np_dtype), b_name),
            ])
            inputs[a_name] = {"shape": [in_f, RANK_DIM], "module": f"model.layers.{layer}.{target}"}
            inputs[b_name] = {"shape": [RANK_DIM, out_f], "module": f"model.layers.{layer}.{target}"}
            x = nodes[0].node.input[0]
            xa = f"{prefix}/XA"
            new = [helper.make_node("MatMul", [x, a_name], [xa], name=f"{prefix}/A/MatMul")]
            offset = 0
            for k, proj in enumerate(nodes):
                b = b_name
                if len(nodes) > 1:
                    b = f"{prefix}/B_{k}"
                    consts = [f"{prefix}/B_{k}/{c}" for c in ("starts", "ends", "axes")]
                    for cname, val in zip(consts, (offset, offset + proj.out_features, 1)):
                        graph.initializer.append(numpy_helper.from_array(np.array([val], np.int64), cname))
                    new.append(helper.make_node("Slice", [b_name, *consts], [b], name=f"{prefix}/B_{k}/Slice"))
                offset += proj.out_features
                y = proj.node.output[0]
                delta, y_new = f"{prefix}/delta_{k}", f"{y}/lora"
                new += [
                    helper.make_node("MatMul", [xa, b], [delta], name=f"{prefix}/B_{k}/MatMul"),
                    helper.make_node("Add", [y, delta], [y_new], name=f"{prefix}/Add_{k}"),
                ]
                for consumer in consumers.get(y, []):
                    for i, name in enumerate(consumer.input):
                        if name == y:
                            consumer.input[i] = y_new
            after.setdefault(nodes[-1].node.name, []).extend(new)
    ordered = []
    for node in graph.node:
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return {"dtype": str(helper.tensor_dtype_to_np_dtype(dtype)), "inputs": inputs}


def lora_spec(model_dir: Path) -> dict:
    path = Path(model_dir) / "lora_inputs.json"
    if not path.exists():
        raise ModelmakeError(f"{path}: missing; the graph in {model_dir} was not built with LoRA inputs")
    return json.loads(path.read_text())


def peft_to_onnx_params(adapter_dir: Path, spec: dict, dtype) -> dict[str, np.ndarray]:
    """Map a peft adapter's tensors onto the graph's LoRA inputs, refusing any mismatch."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.exists():
            raise ModelmakeError(f"{p}: missing; not a peft adapter folder (safetensors only)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ModelmakeError(f"{cfg_path}: field 'peft_type' is {cfg.get('peft_type')!r}, expected 'LORA'")
    tensors = load_file(weights_path)
    params: dict[str, np.ndarray] = {}
    pat = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = pat.match(name)
        if not m:
            raise ModelmakeError(f"{weights_path}: tensor '{name}' is not a LoRA A/B weight of a decoder layer")
        pairs.setdefault(f"{m.group(1)}|{m.group(2)}", {})[m.group(3)] = t
    for key, ab in sorted(pairs.items()):
        layer, module = key.split("|")
        a_name, b_name = input_names(int(layer), module)
        where = f"{weights_path}: module model.layers.{layer}.{module}"
        if set(ab) != {"A", "B"}:
            raise ModelmakeError(f"{where} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
        if a_name not in spec:
            raise ModelmakeError(
                f"{where} has no LoRA inputs in the exported graph (graph targets: "
                f"{sorted({v['module'].split('.', 3)[3] for v in spec.values()})}); add it to export.lora_targets"
            )
        a, b = ab["A"], ab["B"]  # peft: A [r, in], B [out, r]
        r = a.shape[0]
        if b.shape[1] != r:
            raise ModelmakeError(f"{where}: lora_A has rank {r} but lora_B has rank {b.shape[1]}")
        in_f, out_f = spec[a_name]["shape"][0], spec[b_name]["shape"][1]
        if a.shape[1] != in_f or b.shape[0] != out_f:
            raise ModelmakeError(
                f"{where}: shape A{list(a.shape)} B{list(b.shape)} does not fit the graph "
                f"(expects in={in_f}, out={out_f})"
            )
        scale = _scaling(cfg, module, r)
        params[a_name] = np.ascontiguousarray(a.T.astype(np.float32)).astype(dtype)
        params[b_name] = np.ascontiguousarray((b.T.astype(np.float32) * scale)).astype(dtype)
    if not params:
        raise ModelmakeError(f"{weights_path}: holds no LoRA weights")
    return params


def _scaling(cfg: dict, module: str, r: int) -> float:
    alpha = (cfg.get("alpha_pattern") or {}).get(module.rsplit(".", 1)[-1], cfg["lora_alpha"])
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def write_adapter(adapter_dir: Path, model_dir: Path, out_path: Path) -> dict:
    """Write `out_path` (.onnx_adapter) for the peft adapter, checked against the graph's inputs."""
    import onnxruntime as ort

    spec = lora_spec(model_dir)
    dtype = np.dtype(spec["dtype"])
    params = peft_to_onnx_params(adapter_dir, spec["inputs"], dtype)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    fmt.export_adapter(str(out_path))
    ranks = sorted({v.shape[1] for k, v in params.items() if k.endswith(".A")})
    return {"parameters": len(params), "ranks": ranks, "dtype": str(dtype)}
