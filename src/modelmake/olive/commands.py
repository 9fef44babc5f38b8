"""olive commands -> the workflow config Olive's CLI makes of them -> the mapping -> a modelmake build line."""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmake.core.errors import ModelmakeError
from modelmake.olive.experiment import check_model_group
from modelmake.olive.mapper import map_config
from modelmake.olive.settings import DIFFERS, MISSING, NOT_TAKEN, STAGE_ORDER, TAKEN, Mapped, Options, Row, short
from modelmake.olive.tables import REASONS


@dataclass(frozen=True)
class Flag:
    path: tuple | None                  # where Olive's CLI puts the value in its workflow config (None: see note)
    arity: str = "1"                    # "0": a switch; "1": one value; "+": values up to the next flag
    convert: Callable = lambda v: v
    default: Any = MISSING              # Olive's CLI default, written into the config whatever the user typed
    note: str = ""                      # why a flag with no config meaning is not taken


def olive_unescape(s: str) -> str:
    """Olive's `unescaped_str` (olive/common/utils.py): codecs' unicode_escape, here without its
    mangling of non-ASCII text."""
    return codecs.decode(s.encode("ascii", "backslashreplace"), "unicode_escape")


def literal(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


TORCH_EXPORT = "Olive's torch.onnx export route; modelmake's export is the onnxruntime-genai builder"
OUTPUT = REASONS["output_dir"]
MODEL_FLAGS = {  # olive/cli/base.py add_input_model_options
    "--model_name_or_path": Flag(("input_model", "model_path")), "-m": Flag(("input_model", "model_path")),
    "--trust_remote_code": Flag(("input_model", "load_kwargs", "trust_remote_code"), "0"),
    "--task": Flag(("input_model", "task")), "-t": Flag(("input_model", "task")),
    "--output_path": Flag(None, note=OUTPUT), "-o": Flag(None, note=OUTPUT),
    "--log_level": Flag(None, note="Olive's logging"),
    "--save_config_file": Flag(None, "0", note="Olive writes its workflow config; `modelmake olive import` reads one"),
    "--dry_run": Flag(None, "0", note="`modelmake plan` shows what would be built"),
    "--disable_telemetry": Flag(None, "0", note="modelmake sends no telemetry"),
    "--account_name": Flag(None, note=REASONS["cache_config"]),
    "--container_name": Flag(None, note=REASONS["cache_config"]),
    "--test": Flag(None, "0", note="Olive's random test model; modelmake's is model=tiny_phi3 (--model tiny_phi3)"),
    "--test_metrics": Flag(None, "+", note="Olive's test model's checks"),
    "--test_llama_path": Flag(None, note="Olive's llama.cpp comparison"),
}
ADAPTER_FLAGS = {k: Flag(("input_model", "adapter_path")) for k in ("--adapter_path", "-a")}
CODE_FLAGS = {k: Flag(("input_model", k[2:])) for k in ("--model_script", "--script_dir")}
DATA = ("data_configs", 0)
LOAD, PRE = (*DATA, "load_dataset_config"), (*DATA, "pre_process_data_config")
DATA_FLAGS = {  # olive/cli/base.py add_dataset_options, update_dataset_options
    "--data_name": Flag((*LOAD, "data_name")), "-d": Flag((*LOAD, "data_name")),
    "--data_files": Flag((*LOAD, "data_files"), convert=lambda v: v.split(",")),
    "--text_field": Flag((*PRE, "text_cols")),
    "--text_template": Flag((*PRE, "text_template"), convert=olive_unescape),
    "--use_chat_template": Flag((*PRE, "chat_template"), "0"),
    "--max_seq_len": Flag((*PRE, "max_seq_len"), convert=int, default=1024),
    "--add_special_tokens": Flag((*PRE, "add_special_tokens"), convert=literal, default=False),
    "--max_samples": Flag((*PRE, "max_samples"), convert=int, default=256),
    "--batch_size": Flag((*DATA, "dataloader_config", "batch_size"), convert=int, default=1),
    "--input_cols": Flag((*PRE, "input_cols"), "+"),
}
EVAL_SPLIT = "modelmake evaluates on its held-out split (data.eval_fraction)"
TRAIN_DATA_FLAGS = {
    "--train_split": Flag((*LOAD, "split"), default="train"), "--train_subset": Flag((*LOAD, "subset")),
    "--eval_split": Flag(None, note=EVAL_SPLIT), "--eval_subset": Flag(None, note=EVAL_SPLIT),
}
SPLIT_FLAGS = {"--split": Flag((*LOAD, "split")), "--subset": Flag((*LOAD, "subset"))}
ACC = ("systems", "local_system", "accelerators", 0)
ACCEL_FLAGS = {  # olive/cli/base.py add_accelerator_options
    "--device": Flag((*ACC, "device"), default="cpu"),
    "--provider": Flag((*ACC, "execution_providers"), convert=lambda v: [v], default=["CPUExecutionProvider"]),
    "--memory": Flag((*ACC, "memory")),
}
OLIVE_EVAL = "Olive's evaluation data for its search; modelmake's evaluate stage uses the held-out split"
MB = ("passes", "model_builder")
BUILDER_FLAGS = {  # the ModelBuilder pass's options (olive/cli/capture_onnx.py)
    "--precision": Flag((*MB, "precision"), default="fp32"),
    "--int4_block_size": Flag((*MB, "int4_block_size"), convert=int),
    "--int4_accuracy_level": Flag((*MB, "int4_accuracy_level"), convert=int),
    "--exclude_embeds": Flag((*MB, "exclude_embeds"), convert=literal),
    "--exclude_lm_head": Flag((*MB, "exclude_lm_head"), convert=literal),
    "--enable_cuda_graph": Flag((*MB, "enable_cuda_graph"), convert=literal),
    "--extra_mb_options": Flag((*MB, "extra_options")),
}
ROUTE = {"--use_model_builder": Flag(None, "0"), "--use_ort_genai": Flag(None, "0")}
F = ("passes", "f")
Q = ("passes", "q")
COMMANDS: dict[str, dict[str, Flag]] = {
    # olive/cli/quantize.py: the quantization pass is chosen from --algorithm and --implementation
    "quantize": {**MODEL_FLAGS, **ADAPTER_FLAGS, **CODE_FLAGS, **DATA_FLAGS, **SPLIT_FLAGS,
                 "--algorithm": Flag(None), "--precision": Flag(None), "--implementation": Flag(None),
                 "--act_precision": Flag(None, note="activation precision of static quantization; AWQ is weight-only"),
                 "--use_qdq_encoding": Flag(None, "0", note="modelmake's graph uses MatMulNBits, not QDQ")},
    # olive/cli/finetune.py: unknown flags are transformers.TrainingArguments
    "finetune": {**MODEL_FLAGS, **DATA_FLAGS, **TRAIN_DATA_FLAGS,
                 "--method": Flag((*F, "type"), default="lora"),
                 "--lora_r": Flag((*F, "r"), convert=int, default=64),
                 "--lora_alpha": Flag((*F, "alpha"), convert=int, default=16),
                 "--target_modules": Flag((*F, "target_modules"), convert=lambda v: v.split(",")),
                 "--torch_dtype": Flag((*F, "torch_dtype"), default="bfloat16")},
    # olive/cli/auto_opt.py
    "auto-opt": {**MODEL_FLAGS, **ADAPTER_FLAGS, **CODE_FLAGS, **ACCEL_FLAGS, **ROUTE,
                 "--precision": Flag((*MB, "precision"), default="fp32"),
                 "--data_name": Flag(None, note=OLIVE_EVAL), "-d": Flag(None, note=OLIVE_EVAL),
                 "--split": Flag(None, note=OLIVE_EVAL), "--subset": Flag(None, note=OLIVE_EVAL),
                 "--input_cols": Flag(None, "+", note=OLIVE_EVAL), "--batch_size": Flag(None, note=OLIVE_EVAL),
                 "--enable_search": Flag(None, note=REASONS["search_strategy"]),
                 "--seed": Flag(None, note=REASONS["search_strategy"]),
                 "--use_dynamo_exporter": Flag(None, "0", note=TORCH_EXPORT),
                 "--use_qdq_encoding": Flag(None, "0", note="modelmake's graph uses MatMulNBits, not QDQ"),
                 "--dynamic-to-fixed-shape-dim-param": Flag(None, "+", note="fixed shapes for QNN"),
                 "--dynamic-to-fixed-shape-dim-value": Flag(None, "+", note="fixed shapes for QNN"),
                 "--num-splits": Flag(None, note="modelmake exports one graph"),
                 "--cost-model": Flag(None, note="modelmake exports one graph"),
                 "--mixed-precision-overrides-config": Flag(None, "+", note="an fp16 export option")},
    # olive/cli/capture_onnx.py
    "capture-onnx-graph": {**MODEL_FLAGS, **ADAPTER_FLAGS, **CODE_FLAGS, **ROUTE, **BUILDER_FLAGS,
                           **{k: Flag(None, "0", note=TORCH_EXPORT) for k in ("--use_dynamo_exporter",)},
                           **{k: Flag(None, note=TORCH_EXPORT) for k in (
                               "--conversion_device", "--torch_dtype", "--target_opset", "--fixed_param_dict",
                               "--past_key_value_name")},
                           "--use_mobius_builder": Flag(None, "0", note="modelmake's export is the onnxruntime-genai "
                                                        "builder")},
    # olive/cli/generate_adapter.py
    "generate-adapter": {**MODEL_FLAGS,
                         "--adapter_type": Flag(("passes", "e", "adapter_type"), default="lora"),
                         "--adapter_format": Flag(("passes", "e", "save_format"), default="onnx_adapter")},
}
STAGE_OF = {"quantize": "quantize", "finetune": "finetune", "auto-opt": "export", "capture-onnx-graph": "export",
            "generate-adapter": "adapter"}
QUANT_PASS = {"gptq": "GptqQuantizer", "rtn": "Rtn", "hqq": "OnnxHqqQuantization", "quarot": "QuaRot",
              "spinquant": "SpinQuant"}


def training_argument(name: str) -> bool:
    """A transformers.TrainingArguments field: `olive finetune` passes unknown flags to Transformers."""
    from transformers import TrainingArguments

    return name in {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def parse_command(argv: list[str], where: str) -> tuple[str, list[tuple[str, Any]]]:
    """`olive SUB ARGS...` -> (SUB, [(flag, value)]); an unknown subcommand or flag is one line."""
    if not argv or argv[0] != "olive":
        raise ModelmakeError(f"{where}: expected an olive command (olive quantize|finetune|auto-opt|"
                             f"capture-onnx-graph|generate-adapter ...), got {shlex.join(argv) or 'nothing'}")
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sub = argv[1] if len(argv) > 1 else ""
        hint = "; `olive run --config FILE` is `modelmake olive import FILE`" if sub == "run" else ""
        raise ModelmakeError(f"{where}: olive {sub or '(no subcommand)'}: no modelmake translation (translated: "
                             f"{', '.join(COMMANDS)}){hint}")
    sub, flags, args, i = argv[1], COMMANDS[argv[1]], argv[2:], 0
    out = []
    while i < len(args):
        tok = args[i]
        if not tok.startswith("-"):
            raise ModelmakeError(f"{where}: olive {sub}: unexpected argument {tok!r} (every value follows its flag)")
        name, eq, inline = tok.partition("=")
        spec = flags.get(name)
        if spec is None and sub == "finetune" and name.startswith("--") and training_argument(name[2:]):
            spec = Flag((*F, "training_args", name[2:]), convert=literal)
        if spec is None:
            raise ModelmakeError(f"{where}: olive {sub}: unknown flag {name}" + (
                " (neither an olive finetune option nor a transformers TrainingArguments field)"
                if sub == "finetune" else ""))
        if spec.arity == "0":
            if eq:
                raise ModelmakeError(f"{where}: olive {sub}: {name} is a switch and takes no value")
            out.append((name, True))
            i += 1
        elif spec.arity == "+":
            vals = [inline] if eq else []
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                vals.append(args[i])
                i += 1
            out.append((name, vals))
        else:
            if eq:
                out.append((name, inline))
                i += 1
            elif i + 1 < len(args):
                out.append((name, args[i + 1]))
                i += 2
            else:
                raise ModelmakeError(f"{where}: olive {sub}: {name} needs a value")
    return sub, out


def set_path(tree: dict, path: tuple, value) -> None:
    node = tree
    for a, b in zip(path, path[1:]):
        if isinstance(node, list):
            while len(node) <= a:
                node.append({})
            node = node[a]
            continue
        node = node.setdefault(a, [] if isinstance(b, int) else {})
    if isinstance(node, list):
        while len(node) <= path[-1]:
            node.append({})
    node[path[-1]] = value


def translate_commands(commands: list[list[str]], options: Options, where: str = "olive") -> Mapped:
    """A chain of olive commands (each an argv starting with `olive`) as one modelmake build: the
    workflow config Olive's CLI makes of each, merged in order, mapped like an imported config."""
    check_model_group(options.model)
    tree: dict = {}
    labels: dict[tuple, str] = {}   # a setting of the config -> the flag that set it
    orders: dict[tuple, int] = {}   # ... and its place among all the commands' flags
    rows: list[Row] = []
    seq = itertools.count()

    def put(path: tuple, value, text: str) -> None:
        set_path(tree, path, value)
        labels[path] = text
        orders[path] = next(seq)

    def say(text: str, status: str, note: str) -> None:
        rows.append(Row(text, MISSING, [], status, note, next(seq)))

    outputs: dict[str, str] = {}  # an earlier command's --output_path -> its subcommand
    stages: list[str] = []
    base = options.base
    for n, argv in enumerate(commands, 1):
        here = f"{where} (command {n})" if len(commands) > 1 else where
        sub, parsed = parse_command(argv, here)
        given = dict(parsed)
        flags = COMMANDS[sub]

        def label(name, v, sub=sub):  # the flag as typed
            shown = shlex.join(v) if isinstance(v, list) else shlex.quote(str(v))
            return f"olive {sub} {name}" + ("" if v is True else " " + (shown if len(shown) <= 44 else
                                                                         shown[:41] + "..."))

        model = given.get("--model_name_or_path", given.get("-m"))
        if model is None:
            raise ModelmakeError(f"{here}: olive {sub}: --model_name_or_path is required")
        earlier = produced_by(model, outputs, base)
        if earlier is None and n > 1:
            raise ModelmakeError(f"{here}: olive {sub} --model_name_or_path {model}: not the output of an earlier "
                                 "command here; translate one chain at a time")
        if earlier is None and sub == "generate-adapter":
            raise ModelmakeError(f"{here}: olive generate-adapter reads an ONNX model: translate it together with "
                                 "the commands that made that model")
        if earlier is None:
            folder = Path(model) if Path(model).is_absolute() else base / model
            if folder.is_dir() and quantized(folder):
                raise ModelmakeError(f"{here}: olive {sub} --model_name_or_path {model}: a quantized model (an "
                                     "earlier olive quantize's output?): translate the commands together, starting "
                                     "from the model that was quantized")
        if sub == "quantize":  # olive/cli/quantize.py: the pass from --algorithm and --implementation
            algo = str(given.get("--algorithm", "rtn")).lower()
            impl = str(given.get("--implementation", "awq" if algo == "awq" else "olive")).lower()
            awq = algo == "awq" and impl in ("awq", "autoawq", "olive")
            put((*Q, "type"), "AutoAWQQuantizer" if awq else QUANT_PASS.get(algo, f"{algo} ({impl})"),
                label("--algorithm", algo) + (f" --implementation {impl}" if "--implementation" in given else ""))
            if "--precision" in given:
                prec = str(given["--precision"]).lower()
                put((*Q, "bits"), {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8}.get(prec, prec),
                    label("--precision", prec))
        for name, value in parsed:
            spec = flags.get(name) or Flag((*F, "training_args", name[2:]), convert=literal)
            if sub == "quantize" and name in ("--algorithm", "--implementation", "--precision"):
                continue  # the pass's type and bits, above
            if name in ROUTE:
                say(label(name, value), TAKEN, "modelmake's export is the onnxruntime-genai builder")
                continue
            if spec.path is None:
                say(label(name, value), NOT_TAKEN, spec.note)
                if name in ("--output_path", "-o"):
                    outputs[os.path.normpath(str(base / value))] = sub
                continue
            if earlier is not None and spec.path[0] == "input_model" and spec.path[-1] != "trust_remote_code":
                if spec.path[-1] == "adapter_path":
                    if produced_by(value, outputs, base) != "finetune":
                        raise ModelmakeError(f"{here}: olive {sub} {name} {value}: not the output of an olive "
                                             "finetune here: modelmake exports the adapter it trains")
                    note = "the finetune stage's adapter in this chain"
                elif spec.path[-1] == "model_path":
                    note = f"the {earlier} stage's model in this chain"
                else:
                    note = "the chain's model is the first command's"
                say(label(name, value), TAKEN, note)
                continue
            try:
                converted = spec.convert(value)
            except ValueError as e:
                raise ModelmakeError(f"{here}: olive {sub} {name} {value!r}: {e}") from None
            path = where_in_config(sub, spec.path)
            if tree_get(tree, path) is not None and path in labels:  # an earlier command's, replaced
                rows.append(Row(labels[path], MISSING, [], NOT_TAKEN, f"replaced by olive {sub} {name}",
                                orders[path]))
            put(path, converted, label(name, value))
        data = any(flags.get(k, Flag(None)).path and flags[k].path[:2] == DATA for k in given)
        for name, spec in flags.items():  # the defaults Olive's CLI writes into its config
            if spec.default is MISSING or not spec.path or (spec.path[:2] == DATA and not data) \
                    or tree_get(tree, where_in_config(sub, spec.path)) is not None:
                continue
            put(where_in_config(sub, spec.path), spec.default, f"olive {sub} (default {name} "
                f"{short(spec.default, 30)})")
        if sub == "finetune":
            put((*DATA, "name"), "train_data", f"olive {sub} (its data config)")
            put((*F, "train_data_config"), "train_data", f"olive {sub} (the pass's data)")
        if sub in ("auto-opt", "capture-onnx-graph"):
            put((*MB, "type"), "ModelBuilder", f"olive {sub}")
            if not any(k in given for k in ROUTE):
                say(f"olive {sub} (without --use_ort_genai / --use_model_builder)", DIFFERS, "Olive captures the "
                    "graph with torch.onnx and fuses it with ORT; modelmake's export is the onnxruntime-genai "
                    "builder (the --use_ort_genai route)")
            if any(k in given for k in ADAPTER_FLAGS):
                put(("passes", "e", "type"), "ExtractAdapters",
                    label("--adapter_path", given.get("--adapter_path", given.get("-a"))))
        if sub == "generate-adapter":
            put(("passes", "e", "type"), "ExtractAdapters", "olive generate-adapter")
        stages.append(STAGE_OF[sub])
    if "passes" in tree:  # Olive's pass order is the commands' order
        order = {"q": 0, "f": 1, "model_builder": 2, "e": 3}
        tree["passes"] = dict(sorted(tree["passes"].items(), key=lambda kv: order.get(kv[0], 4)))
    options = dataclasses.replace(options, base_is="this folder")
    mapped = map_config(tree, where, options, labels, orders)
    mapped.until = max([*stages, *([mapped.until] if mapped.until else [])], key=STAGE_ORDER.index)
    mapped.rows = sorted(rows + mapped.rows, key=lambda r: r.order)
    return mapped


def where_in_config(sub: str, path: tuple) -> tuple:
    """`olive quantize`'s dataset is AWQ's calibration data, not the fine-tuning data of a later finetune."""
    return ("calibration_data", *path[2:]) if sub == "quantize" and path[:2] == DATA else path


def tree_get(tree, path):
    for p in path:
        if isinstance(tree, dict) and p in tree:
            tree = tree[p]
        elif isinstance(tree, list) and isinstance(p, int) and p < len(tree):
            tree = tree[p]
        else:
            return None
    return tree


def produced_by(path: str | None, outputs: dict[str, str], base: Path) -> str | None:
    """The subcommand whose --output_path holds `path` (the lab reads models/phi/ft/model and .../adapter)."""
    if path is None:
        return None
    p = os.path.normpath(str(base / path))
    for out, sub in outputs.items():
        if p == out or p.startswith(out + os.sep):
            return sub
    return None


def quantized(folder: Path) -> bool:
    try:
        return "quantization_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def script_commands(path: Path) -> tuple[list[list[str]], list[str]]:
    """The olive commands of a shell script (the lab's flow.sh): lines joined at trailing backslashes;
    other lines are skipped and listed. A shell variable cannot be translated: refused."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ModelmakeError(f"{path}: {e.strerror}") from None
    commands, skipped, buf, start = [], [], "", 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = lineno
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        stmt, buf = buf.strip(), ""
        if not stmt or stmt.startswith("#"):
            continue
        try:
            words = shlex.split(stmt, comments=True)
        except ValueError as e:
            raise ModelmakeError(f"{path}:{start}: {e}") from None
        if words[:1] != ["olive"]:
            skipped.append(f"{path}:{start}: {stmt[:60]}")
            continue
        if bad := [w for w in words if "$" in w]:
            raise ModelmakeError(f"{path}:{start}: {bad[0]!r} uses a shell variable: write the value")
        commands.append(words)
    if not commands:
        raise ModelmakeError(f"{path}: no olive command in it")
    return commands, skipped


def split_commands(words: list[str]) -> list[list[str]]:
    """`olive a ... -- olive b ...` -> the commands (a `--` before `olive` starts the next one)."""
    out, cur = [], []
    for i, w in enumerate(words):
        if w == "--" and i + 1 < len(words) and words[i + 1] == "olive":
            out.append(cur)
            cur = []
        else:
            cur.append(w)
    out.append(cur)
    return [c for c in out if c]


def build_line(mapped: Mapped) -> list[str]:
    """The `modelmake build` argv of a translation."""
    until = ["--until", mapped.until] if mapped.until else []
    return ["modelmake", "build", *until, *mapped.overrides()]
