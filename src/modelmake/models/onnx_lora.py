"""Multi-LoRA for onnxruntime-genai graphs: LoRA weights as optional graph inputs, adapters as files.

The ORT-genai builder can only bake one adapter into a graph (and not at all with an AWQ
checkpoint), so this module does the two halves itself:

- `add_lora_inputs` rewrites a built graph: around the projection nodes (`MatMul` or
  `MatMulNBits`) it adds `Y += (X @ A) @ B`, where `A` and `B` are graph inputs with a symbolic
  rank and an *empty* default (r = 0). With no adapter active the branch adds exactly zero, so the
  model is exactly the base; one graph serves every adapter.
- `write_adapter` turns a peft adapter into an `.onnx_adapter` (onnxruntime's AdapterFormat),
  checking every parameter's name, shape and rank against the graph before anything is written.

The inputs follow the graph's nodes, not the HF modules, so the branches cost as few nodes as the
builder's layout allows (a decode step runs every one of them, adapter or not): the projection
nodes of a layer that read the same tensor share one `A` (their modules' A side by side, rank
R = the sum of their ranks), and each node has one `B` [R, node width] holding each module's B in
its rows and its own columns, zeros elsewhere. So Llama's packed `qkv_proj` keeps one packed
branch (one X @ A, one B, one Add; B split across its columns offline), its gate and up share
X @ A, and Phi-3's split `gate_up_proj` needs no run-time Slice: the adapter file holds each
node's part. `write_adapter` lays a peft adapter out so (LoRA's scaling, alpha / r, folded into B).

Naming: group `g` of layer L (its nodes' paths under /model/layers.L/, `/` as `.`, joined by `+`)
has `lora.layers.L.<g>.A` and, per node, `lora.layers.L.<node path>.B`, rank dim
`lora_rank.L.<g>`. `lora_inputs.json` maps them to the HF modules.
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
from modelmake.models.peft_patterns import pattern_value

RANK_DIM = "lora_rank"  # + ".<layer>.<group>": each group's rank is its own symbolic dim
SPEC_FORMAT = 2  # lora_inputs.json: inputs per graph node group (1: per HF module, with run-time Pad/Slice)


def rank_dim(layer: int, group: str) -> str:
    # One shared dim name would tell onnxruntime every rank is equal; an adapter on a subset of
    # modules (the rest keep rank 0) or with per-module ranks then fails in its memory planner
    # ("Shape mismatch attempting to re-use buffer. {0,256} != {4,256}").
    return f"{RANK_DIM}.{layer}.{group}"


_PROJ_OPS = {"MatMul", "MatMulNBits"}


def _dotted(path: str) -> str:
    return path.replace("/", ".")


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
    The projection nodes holding a target are grouped by the tensor X they read: one input A
    [in, R] a group, one input B [R, node width] a node (the module docstring says how an adapter
    fills them). Returns the LoRA spec: {"format", "dtype", "architecture", "inputs": {name:
    {"shape", "modules"}}, "groups": [{"layer", "A", "modules", "nodes": [{"B", "width", "runs":
    [[module, start, end, offset], ...]}]}]}: a run is columns [start, end) of an HF module that the
    node computes at `offset` of its output.
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
    groups: list[dict] = []
    after: dict[str, list[onnx.NodeProto]] = {}
    wanted = set(targets)
    order = list(family.modules)

    def add_input(name: str, shape: list, modules: list[str]) -> None:
        graph.input.append(helper.make_tensor_value_info(name, dtype, shape))
        empty = [0 if isinstance(d, str) else d for d in shape]  # the default: rank 0, adds exactly zero
        graph.initializer.append(numpy_helper.from_array(np.zeros(empty, np_dtype), name))
        inputs[name] = {"shape": shape, "modules": modules}

    for layer in range(config["num_hidden_layers"]):
        nodes = _layer_nodes(family, projs, layer, wanted)
        by_x: dict[str, list[tuple[str, list[_Run], int]]] = {}
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
            if runs:
                by_x.setdefault(proj.node.input[0], []).append((path, runs, width))
        for x, members in by_x.items():
            modules = sorted({r.module for _, runs, _ in members for r in runs}, key=order.index)
            name = "+".join(_dotted(path) for path, _, _ in members)
            rank, a_name = rank_dim(layer, name), f"lora.layers.{layer}.{name}.A"
            prefix = f"/lora/layers.{layer}/{name}"
            add_input(a_name, [projs[members[0][0]].in_features, rank], [f"model.layers.{layer}.{m}" for m in modules])
            xa = f"{prefix}/XA"
            first = projs[members[0][0]].node.name
            after.setdefault(first, []).append(helper.make_node("MatMul", [x, a_name], [xa], name=f"{prefix}/A/MatMul"))
            record = {"layer": layer, "A": a_name, "modules": modules, "nodes": []}
            for path, runs, width in members:
                proj = projs[path]
                b_name = f"lora.layers.{layer}.{_dotted(path)}.B"
                add_input(b_name, [rank, width], [f"model.layers.{layer}.{r.module}" for r in runs])
                y, node_prefix = proj.node.output[0], f"/lora/layers.{layer}/{_dotted(path)}"
                out = f"{y}/lora"
                for consumer in consumers.get(y, []):
                    for i, inp in enumerate(consumer.input):
                        if inp == y:
                            consumer.input[i] = out
                after.setdefault(proj.node.name, []).extend([
                    helper.make_node("MatMul", [xa, b_name], [f"{node_prefix}/delta"], name=f"{node_prefix}/B/MatMul"),
                    helper.make_node("Add", [y, f"{node_prefix}/delta"], [out], name=f"{node_prefix}/Add"),
                ])
                record["nodes"].append({"B": b_name, "width": width,
                                        "runs": [[r.module, r.start, r.end, r.offset] for r in runs]})
            groups.append(record)
    ordered = []
    for node in graph.node:  # each branch right after its projection: X and Y are defined there
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return {"format": SPEC_FORMAT, "dtype": str(np_dtype), "architecture": family.architecture,
            "inputs": inputs, "groups": groups}


def lora_spec(model_dir: Path) -> dict:
    path = Path(model_dir) / "lora_inputs.json"
    if not path.exists():
        raise ModelmakeError(f"{path}: missing; the graph in {model_dir} was not built with LoRA inputs")
    spec = json.loads(path.read_text())
    if spec.get("format") != SPEC_FORMAT:
        raise ModelmakeError(f"{path}: LoRA inputs of format {spec.get('format', 1)}, this modelmake writes adapters "
                             f"for format {SPEC_FORMAT}: rebuild the export")
    return spec


def peft_to_onnx_params(adapter_dir: Path, spec: dict, dtype) -> tuple[dict[str, np.ndarray], list[int]]:
    """Map a peft adapter's tensors onto the graph's LoRA inputs (`spec`: lora_inputs.json), refusing
    any mismatch: a group's A holds its modules' A side by side, each node's B their B in their rows
    and its columns (zeros elsewhere); a group none of whose modules the adapter has stays empty."""
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
    pat = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = pat.match(name)
        if not m:
            raise ModelmakeError(f"{weights_path}: tensor '{name}' is not a LoRA A/B weight of a decoder layer")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
    where_group = {(g["layer"], m): g for g in spec["groups"] for m in g["modules"]}
    targets = sorted({m for g in spec["groups"] for m in g["modules"]})
    scaled: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # A [in, r], B*scale [r, out]
    for (layer, module), ab in sorted(pairs.items()):
        where = f"{weights_path}: module model.layers.{layer}.{module}"
        if set(ab) != {"A", "B"}:
            raise ModelmakeError(f"{where} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
        group = where_group.get((layer, module))
        if group is None:
            raise ModelmakeError(
                f"{where} has no LoRA inputs in the exported graph (graph targets: {targets}); "
                "add it to export.lora_targets"
            )
        a, b = ab["A"], ab["B"]  # peft: A [r, in], B [out, r]
        r = a.shape[0]
        if b.shape[1] != r:
            raise ModelmakeError(f"{where}: lora_A has rank {r} but lora_B has rank {b.shape[1]}")
        in_f = spec["inputs"][group["A"]]["shape"][0]
        out_f = max(run[2] for n in group["nodes"] for run in n["runs"] if run[0] == module)
        if a.shape[1] != in_f or b.shape[0] != out_f:
            raise ModelmakeError(
                f"{where}: shape A{list(a.shape)} B{list(b.shape)} does not fit the graph "
                f"(expects in={in_f}, out={out_f})"
            )
        scale = _scaling(cfg, f"model.layers.{layer}.{module}", r)
        scaled[(layer, module)] = (a.T.astype(np.float32), b.T.astype(np.float32) * scale)
    if not scaled:
        raise ModelmakeError(f"{weights_path}: holds no LoRA weights")
    params: dict[str, np.ndarray] = {}
    for group in spec["groups"]:
        present = [m for m in group["modules"] if (group["layer"], m) in scaled]
        if not present:
            continue  # its inputs keep their empty defaults
        rows, offset = {}, 0
        for m in present:
            r = scaled[(group["layer"], m)][0].shape[1]
            rows[m], offset = (offset, offset + r), offset + r
        params[group["A"]] = np.ascontiguousarray(
            np.concatenate([scaled[(group["layer"], m)][0] for m in present], axis=1)).astype(dtype)
        for node in group["nodes"]:
            b = np.zeros((offset, node["width"]), np.float32)
            for module, start, end, at in node["runs"]:
                if module in rows:
                    r0, r1 = rows[module]
                    b[r0:r1, at:at + end - start] = scaled[(group["layer"], module)][1][:, start:end]
            params[node["B"]] = b.astype(dtype)
    return params, sorted({a.shape[1] for a, _ in scaled.values()})


def _scaling(cfg: dict, module_name: str, r: int) -> float:
    alpha = pattern_value(cfg.get("alpha_pattern"), module_name, cfg["lora_alpha"])
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def write_adapter(adapter_dir: Path, model_dir: Path, out_path: Path) -> dict:
    """Write `out_path` (.onnx_adapter) for the peft adapter, checked against the graph's inputs."""
    import onnxruntime as ort

    spec = lora_spec(model_dir)
    dtype = np.dtype(spec["dtype"])
    params, ranks = peft_to_onnx_params(adapter_dir, spec, dtype)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    fmt.export_adapter(str(out_path))
    return {"parameters": len(params), "ranks": ranks, "dtype": str(dtype)}
