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
`lora.layers.3.mlp.down_proj.A` / `.B`, B as wide as the HF module. LoRA's scaling (alpha / r)
is folded into B. How the builder lays each family's projections out is in `families`: where it
splits one HF projection into several graph nodes (Phi-3's `gate_up_proj` becomes `gate_proj`
and `up_proj`), B is sliced; where it packs several into one node (Llama's q/k/v into
`qkv_proj`), each module's delta is padded into its own columns of that node.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from modelmake.core.errors import ModelmakeError
from modelmake.models.families import Family, family_for_config, module_shapes, part_columns

RANK_DIM = "lora_rank"  # + ".<layer>.<module>": each module's rank is its own symbolic dim


def rank_dim(layer: int, module: str) -> str:
    # One shared dim name would tell onnxruntime every rank is equal; an adapter on a subset of
    # modules (the rest keep rank 0) or with per-module ranks then fails in its memory planner
    # ("Shape mismatch attempting to re-use buffer. {0,256} != {4,256}").
    return f"{RANK_DIM}.{layer}.{module}"
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
        # the builder names a node it quantized itself (RTN, not a pre-quantized checkpoint) MatMul_Q4
        m = re.match(r"^/model/layers\.(\d+)/(.+)/(MatMul|MatMulNBits|MatMul_Q4)$", node.name)
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


@dataclass
class _Run:
    """Columns [start, end) of one HF module that a graph node computes at `offset` of its output."""
    module: str
    start: int
    end: int
    offset: int


def _runs(family: Family, config: dict, pieces) -> list[_Run]:
    """A node's pieces with adjacent parts of one module merged (a packed node holding a whole
    module needs no slicing)."""
    runs: list[_Run] = []
    offset = 0
    for module, part in pieces:
        start, end = part_columns(family, config, module, part)
        if runs and runs[-1].module == module and runs[-1].end == start:
            runs[-1].end = end
        else:
            runs.append(_Run(module, start, end, offset))
        offset += end - start
    return runs


def _layer_nodes(family: Family, projs: dict[str, _Proj], layer: int, targets: set[str]) -> dict[str, list]:
    """Graph node path -> its pieces, for every layout group holding a target, in this layer."""
    chosen = {}
    for alternatives in family.layouts:
        modules = {m for layout in alternatives for pieces in layout.values() for m, _ in pieces}
        if not modules & targets:
            continue
        layout = next((lay for lay in alternatives if all(f"{layer}/{p}" in projs for p in lay)), None)
        if layout is None:
            tried = [sorted(lay) for lay in alternatives]
            raise ModelmakeError(
                f"graph has no projection node for model.layers.{layer}.{sorted(modules & targets)} "
                f"({family.architecture}; looked for {tried} under /model/layers.{layer}/)"
            )
        chosen.update({f"{layer}/{p}": pieces for p, pieces in layout.items()})
    return chosen


def add_lora_inputs(model: onnx.ModelProto, config: dict, targets: list[str]) -> dict:
    """Insert optional LoRA branches for `targets` (HF modules, e.g. `self_attn.q_proj`) in every layer.

    `config` is the model's config.json: it names the family (hence the graph layout) and the widths.
    Each target gets its own inputs A [in, r] and B [r, out], out = the HF module's width. Where
    the builder packs several modules into one node (Llama's q/k/v), each module's delta is padded
    into its own columns of that node; where it splits one module into several nodes (Phi-3's
    gate_up), B is sliced. Returns the LoRA spec:
    {"dtype": ..., "architecture": ..., "inputs": {name: {"shape": [in, "lora_rank.<layer>.<module>"], "module": ...}}}.
    """
    family = family_for_config(config)
    shapes = module_shapes(family, config)
    unknown = [t for t in targets if t not in family.modules]
    if unknown:
        raise ModelmakeError(
            f"export.lora_targets: {unknown} name no module of {family.architecture}; known: {list(family.modules)}"
        )
    graph = model.graph
    dtype = _activation_dtype(graph)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    projs = _proj_nodes(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    position = {node.name: i for i, node in enumerate(graph.node)}
    inputs: dict[str, dict] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    wanted = set(targets)
    for layer in range(config["num_hidden_layers"]):
        for target in targets:  # inputs in the order asked for
            in_f, out_f = shapes[target]
            a_name, b_name = input_names(layer, target)
            rank = rank_dim(layer, target)
            graph.input.extend([
                helper.make_tensor_value_info(a_name, dtype, [in_f, rank]),
                helper.make_tensor_value_info(b_name, dtype, [rank, out_f]),
            ])
            graph.initializer.extend([  # empty default: no adapter adds exactly zero
                numpy_helper.from_array(np.zeros((in_f, 0), np_dtype), a_name),
                numpy_helper.from_array(np.zeros((0, out_f), np_dtype), b_name),
            ])
            inputs[a_name] = {"shape": [in_f, rank], "module": f"model.layers.{layer}.{target}"}
            inputs[b_name] = {"shape": [rank, out_f], "module": f"model.layers.{layer}.{target}"}
        xa: dict[str, tuple[str, str]] = {}      # module -> (its X, X @ A)
        slices: dict[str, int] = {}              # module -> B pieces made so far
        nodes = _layer_nodes(family, projs, layer, wanted)
        for path in sorted(nodes, key=lambda p: position[projs[p].node.name]):
            proj, runs = projs[path], _runs(family, config, nodes[path])
            runs = [r for r in runs if r.module in wanted]
            width = sum(e - s for s, e in (part_columns(family, config, m, i) for m, i in nodes[path]))
            if proj.out_features != width or any(shapes[r.module][0] != proj.in_features for r in runs):
                raise ModelmakeError(
                    f"graph node {proj.node.name} is [{proj.in_features}, {proj.out_features}], but "
                    f"{family.architecture}'s config makes {[m for m, _ in nodes[path]]} "
                    f"[{shapes[runs[0].module][0] if runs else '?'}, {width}]: config and graph disagree"
                )
            x, y = proj.node.input[0], proj.node.output[0]
            new, current = [], y
            for j, run in enumerate(runs):
                prefix = f"/lora/layers.{layer}/{run.module}"
                a_name, b_name = input_names(layer, run.module)
                if run.module not in xa:
                    xa[run.module] = (x, f"{prefix}/XA")
                    new.append(helper.make_node("MatMul", [x, a_name], [f"{prefix}/XA"], name=f"{prefix}/A/MatMul"))
                elif xa[run.module][0] != x:
                    raise ModelmakeError(f"graph nodes of model.layers.{layer}.{run.module} read different inputs")
                k = slices.get(run.module, 0)
                slices[run.module] = k + 1
                b, n = b_name, run.end - run.start
                if n != shapes[run.module][1]:  # this node holds part of the module: slice B's columns
                    b = f"{prefix}/B_{k}"
                    consts = [f"{prefix}/B_{k}/{c}" for c in ("starts", "ends", "axes")]
                    for cname, val in zip(consts, (run.start, run.end, 1)):
                        graph.initializer.append(numpy_helper.from_array(np.array([val], np.int64), cname))
                    new.append(helper.make_node("Slice", [b_name, *consts], [b], name=f"{prefix}/B_{k}/Slice"))
                if n != width:  # the node holds other modules too: zero columns around this one's
                    pads = f"{prefix}/B_{k}/pads"
                    graph.initializer.append(numpy_helper.from_array(
                        np.array([0, run.offset, 0, width - run.offset - n], np.int64), pads))
                    new.append(helper.make_node("Pad", [b, pads], [f"{b}/padded"], name=f"{prefix}/B_{k}/Pad"))
                    b = f"{b}/padded"
                delta = f"{prefix}/delta_{k}"
                nxt = f"{y}/lora" if j == len(runs) - 1 else f"{y}/lora_{j}"
                new += [
                    helper.make_node("MatMul", [f"{prefix}/XA", b], [delta], name=f"{prefix}/B_{k}/MatMul"),
                    helper.make_node("Add", [current, delta], [nxt], name=f"{prefix}/Add_{k}"),
                ]
                current = nxt
            if not runs:
                continue
            for consumer in consumers.get(y, []):
                for i, name in enumerate(consumer.input):
                    if name == y:
                        consumer.input[i] = current
            after[proj.node.name] = new
    ordered = []
    for node in graph.node:  # each branch right after its projection: X and Y are defined there
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return {"dtype": str(np_dtype), "architecture": family.architecture, "inputs": inputs}


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
        params[b_name] = np.ascontiguousarray(b.T.astype(np.float32) * scale).astype(dtype)
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
