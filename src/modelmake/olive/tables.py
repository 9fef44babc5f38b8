"""The mapping tables: converters, Olive pass parameters -> Hydra keys, and why a setting is not taken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelmake.olive.settings import MISSING


def integer(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ValueError(f"must be a whole number, got {v!r}")
    return int(v)


def number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, got {v!r}")
    return int(v) if isinstance(v, int) else float(v)


def boolean(v):
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def names(v):
    v = v.split(",") if isinstance(v, str) else v
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"must be a list of module names, got {v!r}")
    return list(v)


def steps(v):
    v = integer(v)
    if v <= 0:  # Transformers' -1: train num_train_epochs instead
        raise ValueError(f"is {v}: Transformers then trains num_train_epochs instead")
    return v


def clip(v):
    """Transformers clips when max_grad_norm > 0 (0 or null: no clipping)."""
    return None if v is None or number(v) == 0 else number(v)


def awq_bits(v):
    if integer(v) != 4:
        raise ValueError(f"is {v}: modelmake's AWQ (AutoAWQ GEMM, read by the ORT-genai builder) is 4-bit only")
    return 4


def awq_version(v):
    if str(v).lower() != "gemm":
        raise ValueError(f"is {v!r}: the onnxruntime-genai builder reads GEMM packing only")
    return "gemm"


@dataclass(frozen=True)
class Field:
    """One row of a mapping table: an Olive parameter (its names, newest first) -> a Hydra key."""
    names: tuple[str, ...]
    key: str
    convert: Callable = lambda v: v
    note: str = ""
    default: Any = MISSING      # Olive's default, carried over when the config leaves it out


# The LoRA / QLoRA pass (olive/passes/pytorch/lora.py LoRA._default_config; `lora_r`, `lora_alpha`
# are the names before Olive 0.6: the cookbook's configs). Defaults are Olive's, which modelmake's differ from.
LORA = (
    Field(("r", "lora_r"), "lora.r", integer, default=64),
    Field(("alpha", "lora_alpha"), "lora.alpha", number, default=16),
    Field(("lora_dropout",), "lora.dropout", number, default=0.05),
    Field(("target_modules",), "lora.target_modules", names),
)
# training_args: transformers.TrainingArguments with Olive's defaults (lora.py HFTrainingArguments)
TRAINING = (
    Field(("learning_rate",), "train.lr", number, default=2e-4),
    Field(("max_steps",), "train.steps", steps, "optimizer steps, as in Transformers"),
    Field(("per_device_train_batch_size",), "train.batch_size", integer),
    Field(("gradient_accumulation_steps",), "train.grad_accum_steps", integer,
          "micro-batches per optimizer step, weighted by response tokens (Transformers >= 4.46 does the same)"),
    Field(("max_grad_norm",), "train.max_grad_norm", clip),
    Field(("warmup_steps",), "train.warmup_steps", integer),
    Field(("weight_decay",), "train.weight_decay", number),
    Field(("seed",), "train.seed", integer, "a seed reproduces a run within one tool, not across tools"),
    Field(("eval_steps",), "train.eval_every", integer),
)
# The AWQ pass (olive/passes/pytorch/autoawq.py AutoAWQQuantizer; `w_bit` before Olive 0.6)
AWQ = (
    Field(("bits", "w_bit"), "quantize.w_bit", awq_bits),
    Field(("q_group_size",), "quantize.group_size", integer, default=128),
    Field(("zero_point",), "quantize.zero_point", boolean),
    Field(("version",), "quantize.version", awq_version),
    Field(("duo_scaling",), "quantize.duo_scaling", boolean),
)
# The ModelBuilder pass (olive/passes/onnx/model_builder.py)
BUILDER = (
    Field(("int4_accuracy_level",), "export.accuracy_level", integer),
    Field(("exclude_lm_head",), "export.exclude_lm_head", boolean),
)

SHARED_CACHE = ("Olive's shared Azure cache; modelmake's is cache=azure (cache.url or $MODELMAKE_CACHE, "
                "docs/cache.md), a machine's setting rather than an experiment's")

# Why a setting no mapping reads is not taken, by its name (or `parent.name` where the name alone is
# ambiguous). Anything else: "modelmake has no such setting".
REASONS = {
    "$schema": "the JSON schema of Olive's configs",
    "log_severity_level": "Olive's logging", "ort_log_severity_level": "Olive's logging",
    "ort_py_log_severity_level": "Olive's logging", "log_to_file": "Olive's logging",
    "cache_dir": "modelmake's artifacts/ is its cache: every artifact keyed by what built it",
    "clean_cache": "modelmake's cache is keyed by content: nothing stale to clean",
    "clean_evaluation_cache": "modelmake's cache is keyed by content: nothing stale to clean",
    "cache_config": SHARED_CACHE, "enable_shared_cache": SHARED_CACHE,
    "output_dir": "artifacts stay at artifacts/<stage>/<key>/ (`modelmake plan` prints them; artifacts=DIR moves "
                  "the whole store); nothing is copied elsewhere",
    "output_name": "artifacts are named by stage and key",
    "search_strategy": "Olive's search over pass parameters; modelmake searches overrides with Optuna "
                       "(`modelmake search`, conf/search/) or sweeps them (lora.r=4,8,16)",
    "search_space": "Olive's search; see `modelmake search`",
    "disable_search": "Olive's search; see `modelmake search`",
    "search": "Olive's search; see `modelmake search`",
    "evaluator": "modelmake's evaluate stage measures perplexity, parity, accuracy, speed and sizes",
    "evaluators": "modelmake's evaluate stage measures perplexity, parity, accuracy, speed and sizes",
    "evaluate_input_model": "modelmake's evaluate stage measures the base model beside the fine-tuned one",
    "plot_pareto_frontier": "Olive's search", "no_artifacts": "Olive's output files",
    "packaging_config": "modelmake's register stage packages the model and adapter (conf/register/)",
    "workflow_id": "the experiment's name (--name, else this)", "workflow_host": "Olive's remote workflows",
    "azureml_client": "modelmake registers to Azure ML through conf/register/azureml.yaml, credentials from "
                      "the environment", "auto_optimizer_config": "Olive's auto optimizer",
    "pass_flows": "modelmake's chain is fixed: base, dataset, quantize, finetune, export, adapter",
    "host": "modelmake runs where Snakemake runs: here, or a cluster (--profile slurm)",
    "model_script": "modelmake runs no config-supplied code", "script_dir": "modelmake runs no config-supplied code",
    "user_script": "modelmake runs no config-supplied code (no component here uses it)",
    "io_config": "the onnxruntime-genai builder derives the graph's inputs and outputs",
    "dummy_inputs_func": "modelmake runs no config-supplied code",
    "model_loader": "modelmake runs no config-supplied code",
    "model_file_format": "modelmake reads Hugging Face folders (safetensors)",
    "attn_implementation": "the stages choose the attention implementation",
    "torch_dtype": "modelmake trains LoRA in fp32 on the int4 base and calibrates AWQ in the model's dtype",
    "device_map": "modelmake loads the model whole on the stage's device",
    "max_memory": "modelmake loads the model whole on the stage's device",
    "allow_tf32": "a GPU speed setting modelmake leaves at torch's default",
    "ephemeral_gpu_offload": "peft's GPU offload; modelmake does not offload",
    "modules_to_save": "modelmake's adapter holds the LoRA weights alone",
    "compute_dtype": "QLoRA's bitsandbytes setting: modelmake trains on the AWQ int4 base instead",
    "double_quant": "a QLoRA (bitsandbytes) setting: modelmake trains on the AWQ int4 base instead",
    "quant_type": "QLoRA's bitsandbytes setting: modelmake trains on the AWQ int4 base instead",
    "save_quant_config": "QLoRA's bitsandbytes setting: modelmake trains on the AWQ int4 base instead",
    "save_as_external_data": "the builder writes weights as it needs",
    "all_tensors_to_one_file": "the builder's choice",
    "external_data_name": "the builder's choice",
    "deepspeed": "DeepSpeed: modelmake trains in one process",
    "fsdp": "FSDP: modelmake trains in one process", "fsdp_config": "FSDP: modelmake trains in one process",
    "gradient_checkpointing": "a memory saving that leaves the gradient unchanged; modelmake does not checkpoint",
    "logging_steps": "modelmake logs every step to train_log.csv",
    "save_steps": "modelmake saves the adapter once, at the end", "save_strategy": "modelmake saves once, at the end",
    "save_total_limit": "modelmake saves once, at the end",
    "load_best_model_at_end": "modelmake keeps the last step's adapter",
    "evaluation_strategy": "modelmake evaluates every train.eval_every steps",
    "eval_strategy": "modelmake evaluates every train.eval_every steps",
    "per_device_eval_batch_size": "modelmake evaluates in batches of train.batch_size (no effect on the result)",
    "report_to": "modelmake records metrics in each artifact's manifest",
    "run_name": "the experiment's name", "overwrite_output_dir": "artifacts are never overwritten in place",
    "resume_from_checkpoint": "modelmake trains from the start (a finished artifact is reused whole)",
    "group_by_length": "modelmake draws seeded random batches",
    "data_seed": "Transformers' batch-order seed; modelmake's train.seed sets the order and the initialization",
    "dataloader_num_workers": "modelmake batches in the training process",
    "fp16": "mixed precision: modelmake trains LoRA in fp32", "bf16": "mixed precision: modelmake trains LoRA in fp32",
    "tf32": "a GPU speed setting", "torch_compile": "modelmake runs eager",
    "output_dir_checkpoints": "modelmake saves once",
    "optim": "modelmake's optimizer is torch AdamW",
    "adam_beta1": "modelmake's AdamW uses torch's betas (0.9, 0.999)",
    "adam_epsilon": "modelmake's AdamW uses torch's eps (1e-8)",
    "dataloader_config.batch_size": "the evaluation batch; training batches are per_device_train_batch_size",
    "post_process_data_config": "the evaluation's post-processing", "dataloader_config": "the evaluation's loader",
    "pad_to_max_len": "modelmake pads each batch to its longest record (right padding)",
    "use_attention_mask": "modelmake always passes the attention mask",
    "add_special_tokens": "the data template holds the special tokens as text",
    "padding_side": "modelmake pads right (left padding diverged in trials)",
    "joiner": "modelmake trains one record per sequence",
    "stride": "modelmake trains one record per sequence",
    "drop_short_sequences": "modelmake trains one record per sequence",
    "processing_batch_size": "a pre-processing speed setting",
    "random_seed": "modelmake's data.seed splits and train.seed orders the records",
    "random_retries": "modelmake trains one record per sequence",
    "max_samples": "modelmake trains on every record of the training split (Olive's CLI default is 256)",
    "model_name": "the tokenizer is the base model's", "trust_remote_code": "the tokenizer is the base model's",
    "subset": "a hub dataset's configuration: modelmake reads a local JSONL file",
    "col_filters": "filter the records before modelmake reads them",
    "input_cols": "an evaluation setting", "label_col": "an evaluation setting", "label_cols": "an evaluation setting",
    "task": "modelmake builds causal language models (text-generation)",
    "accelerators.memory": "a scheduler setting: conf/resources/ (mem_mb) says what each stage asks for",
    "execution_mode_list": "Olive's session tuning", "opt_level_list": "Olive's session tuning",
    "io_bind": "Olive's session tuning",
    "make_inputs": "modelmake's graph always takes the LoRA weights as optional inputs",
    "dynamic_lora_r": "modelmake's LoRA inputs have a symbolic rank: any rank loads on one graph",
    "optional_inputs": "modelmake's LoRA inputs are always optional (no adapter adds exactly zero)",
    "metadata_only": "modelmake's export builds the whole graph with the onnxruntime-genai builder",
    "int4_block_size": "modelmake's int4 weights are AWQ's: their block size is quantize.group_size",
    "int4_is_symmetric": "modelmake's int4 weights are AWQ's (quantize.zero_point)",
    "exclude_embeds": "modelmake keeps the token embeddings unquantized (export.exclude_lm_head)",
    "enable_cuda_graph": "a runtime option of onnxruntime-genai's genai_config.json",
    "extra_options": "builder options modelmake sets itself (conf/export/)",
    "modules_to_not_convert": "modelmake's AWQ quantizes every linear layer but lm_head",
    "export_compatible": "modelmake's AWQ writes real int4 weights for the builder",
    "input_model_dtype": "modelmake calibrates in the model's dtype (model.dtype for a GGUF)",
    "pack_model": "modelmake's AWQ writes packed GEMM weights", "disable_search_for_pass": "Olive's search",
    "chat_template": "off: the text template renders the records",
    "calibration_data": "AWQ's calibration data: modelmake calibrates on the training split of data.path "
                        "(quantize.calib_samples records)",
    "hf_token": "modelmake reads a hub token from the environment (HF_TOKEN), never from config",
    "systems": "a system the workflow does not run its output on (modelmake runs where Snakemake runs: here, "
               "or --profile slurm)",
    "aml_compute": "an Azure ML system's compute: modelmake runs here or on a cluster (--profile slurm)",
    "aml_docker_config": "an Azure ML system's environment: modelmake's is requirements/ (or environment.yml)",
    "data_configs": "a data config no fine-tuning pass reads (modelmake calibrates and evaluates on the "
                    "fine-tuning data's splits)",
}


# Sections whose every setting shares the section's reason
SECTIONS = ("calibration_data", "evaluators", "search_strategy", "packaging_config", "cache_config",
            "auto_optimizer_config", "azureml_client")


def reason(path: tuple) -> str:
    if path and path[0] in SECTIONS:
        return REASONS[path[0]]
    names_ = [str(p) for p in path if not isinstance(p, int)]
    for parent in names_[:-1]:
        if f"{parent}.{names_[-1]}" in REASONS:
            return REASONS[f"{parent}.{names_[-1]}"]
    for name in reversed(names_):  # a leaf under a section with a reason (post_process_data_config.params.x)
        if name in REASONS:
            return REASONS[name]
    return "modelmake has no such setting"

