"""Passes: LoRA / QLoRA (with training_args), AWQ, ModelBuilder, MergeAdapterWeights, ExtractAdapters,
and the rest (no equivalent)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from modelmake.core.paths import ROOT
from modelmake.olive.data import count_records
from modelmake.olive.document import show
from modelmake.olive.settings import DEFAULT, DIFFERS, NO_EQUIVALENT, NOT_TAKEN, TAKEN
from modelmake.olive.tables import AWQ, BUILDER, LORA, TRAINING, number


class PassMapping:
    """Mapper's part for `passes`."""

    def passes(self) -> list[tuple[str, tuple, str]]:
        """(name, parameters' path, kind) of each pass, in order; a list of alternatives takes its first."""
        doc = self.doc
        passes = doc.get(("passes",))
        if passes is None:
            return []
        if not isinstance(passes, dict):
            raise doc.refuse(("passes",), f"must be a mapping of pass names to passes, got {type(passes).__name__}")
        kinds = {"lora": "lora", "qlora": "lora", "autoawqquantizer": "awq", "modelbuilder": "builder",
                 "mergeadapterweights": "merge", "extractadapters": "extract"}
        out = []
        for name, spec in passes.items():
            path = ("passes", name)
            if isinstance(spec, list):  # Olive searches over alternatives; modelmake builds one
                for i in range(1, len(spec)):
                    self.row((*path, i), NOT_TAKEN, note="an alternative for Olive's search: the first is taken "
                             "(sweep the differing setting instead, e.g. lora.r=8,16)")
                path = (*path, 0)
                spec = spec[0] if spec else {}
            if not isinstance(spec, dict) or "type" not in spec:
                raise doc.refuse(path, "a pass needs a type")
            out.append((str(name), doc.params(path), kinds.get(str(spec["type"]).lower(), "other")))
        tuning = [n for n, _, k in out if k == "lora"]
        if len(tuning) > 1:  # phi3_template.json lists LoRA and QLoRA as choices
            raise doc.refuse(("passes", tuning[1]), f"a second fine-tuning pass ({tuning}): modelmake trains one "
                             "adapter per point; import one workflow at a time")
        return out

    def pass_type(self, name: str) -> tuple:
        path = ("passes", name, 0) if isinstance(self.doc.get(("passes", name)), list) else ("passes", name)
        return (*path, "type")

    def lora(self, name: str, p: tuple, passes) -> None:
        doc = self.doc
        t = self.pass_type(name)
        qlora = str(doc.get(t)).lower() == "qlora"
        before = [k for _, _, k in passes[: [n for n, _, _ in passes].index(name)]]
        base = "the AWQ int4 base" + (" (the AWQ pass before it)" if "awq" in before else
                                      ", quantized first (Olive trains on the full-precision model)")
        self.row(t, DIFFERS if qlora or "awq" not in before else TAKEN, note=(
            f"QLoRA's bitsandbytes NF4 base is replaced: modelmake trains LoRA on {base}" if qlora
            else f"modelmake trains LoRA on {base}"))
        self.stages.add("finetune")
        self.fields(LORA, [p], show(p))
        if not doc.has((*p, "target_modules")):
            self.row(None, DEFAULT, origin=f"{show(p)}.target_modules", near=p,
                     note="not set: peft's default for the architecture (Phi-3: qkv_proj); modelmake keeps "
                     "lora.target_modules=auto, every projection of the family")
        ta = (*p, "training_args")
        scopes = self.scopes(ta, "extra_args")  # BaseHFTrainingArguments nests unknown fields under extra_args
        self.fields(TRAINING, scopes, show(ta))
        self.training_specials(scopes)

    def training_specials(self, scopes: list[tuple]) -> None:
        doc = self.doc

        def at(key):
            return next(((*s, key) for s in scopes if doc.has((*s, key))), None)

        steps_at, epochs_at = at("max_steps"), at("num_train_epochs")
        if epochs_at is not None and steps_at is not None:
            self.row(epochs_at, NOT_TAKEN, note="max_steps is set: Transformers trains max_steps, not the epochs")
        elif steps_at is None:  # epochs (Transformers' default 3) as optimizer steps over the training split
            epochs = self.convert(epochs_at, doc.get(epochs_at), number) if epochs_at else 3
            n = self.train_records()
            batch = self.values.get("train.batch_size", 8) * self.values.get("train.grad_accum_steps", 1)
            became = {"train.steps": max(1, math.ceil(epochs * math.ceil(n / batch)))}
            why = f"{epochs} epochs x ceil({n} training records / {batch} per step): modelmake counts steps"
            if epochs_at:
                self.row(epochs_at, DIFFERS, became, why)
            else:
                self.row(None, DEFAULT, became, "not set: Transformers' default num_train_epochs 3; " + why,
                         origin=f"{show(scopes[0])}.num_train_epochs", near=scopes[0])
        if (q := at("warmup_ratio")) is not None and self.values.get("train.warmup_steps"):
            self.row(q, NOT_TAKEN, note="warmup_steps is set: Transformers uses it and ignores the ratio")
        elif q is not None or at("warmup_steps") is None:
            ratio = self.convert(q, doc.get(q), number) if q else 0.03  # Olive's default
            total = self.values.get("train.steps", 100)
            became = {"train.warmup_steps": math.ceil(total * ratio)}  # Transformers' get_warmup_steps
            if q:
                self.row(q, DIFFERS, became, f"ceil({ratio} x {total} steps), as Transformers counts it")
            else:
                self.row(None, DEFAULT, became, f"not set: Olive's default warmup_ratio 0.03 x {total} steps",
                         origin=f"{show(scopes[0])}.warmup_ratio", near=scopes[0])
        sched = doc.get(q) if (q := at("lr_scheduler_type")) is not None else None
        if sched == "cosine":
            self.row(q, TAKEN, note="modelmake's schedule: linear warmup, then cosine decay")
        else:
            self.row(q, NOT_TAKEN, value=sched if q else "constant", origin=None if q else
                     f"{show(scopes[0])}.lr_scheduler_type (not set: Olive's default 'constant')", near=scopes[0],
                     note="modelmake's schedule is linear warmup, then cosine decay to zero")
        if (q := at("adam_beta2")) is not None:
            v = doc.get(q)
            self.row(q, TAKEN if v == 0.999 else NOT_TAKEN,
                     note="torch AdamW's default, as modelmake uses" if v == 0.999
                     else "modelmake's AdamW uses torch's betas (0.9, 0.999)")
        if (q := at("optim")) is not None:
            v = str(doc.get(q))
            self.row(q, TAKEN if v in ("adamw_torch", "adamw_hf", "adamw_torch_fused") else NOT_TAKEN,
                     note="torch AdamW" if v.startswith("adamw_torch") else "modelmake's optimizer is torch AdamW")

    def train_records(self) -> int:
        from modelmake.data.records import read_records, split
        from modelmake.data.templates import template_fields

        path = Path(self.values["data.path"])
        path = path if path.is_absolute() else ROOT / path
        if self.values.get("data.template") == "chat":
            return math.ceil(count_records(path) * (1 - self.values.get("data.eval_fraction", 0.1)))
        records = read_records(path, template_fields(self.values["data.template"]))
        train, _ = split(records, records, self.values.get("data.eval_fraction", 0.1), 0)
        return len(train)

    def awq(self, name: str, p: tuple, passes) -> None:
        doc = self.doc
        self.row(self.pass_type(name), TAKEN, {"quantize": "awq_g64"}, "AutoAWQ 4-bit GEMM, as Olive runs it")
        self.stages.add("quantize")
        self.fields(AWQ, [p], show(p))
        dc = (*p, "data_config")
        if doc.has(dc):
            self.row(dc, DIFFERS, note="modelmake calibrates on the training split of data.path "
                     "(quantize.calib_samples records)")
        else:
            self.row(None, DIFFERS, origin=f"{show(p)}.data_config", near=p,
                     note="not set: Olive calibrates on AutoAWQ's default (pile validation, downloaded); modelmake "
                     "on the training split of data.path")
        order = [k for _, _, k in passes]
        if "lora" in order and order.index("lora") < order.index("awq"):
            self.row(None, DIFFERS, note="Olive quantizes after fine-tuning; modelmake quantizes first and trains "
                     "LoRA on the int4 base (the lab's order)", origin=f"passes.{name} (order)")

    def builder(self, name: str, p: tuple, passes) -> None:
        doc = self.doc
        self.row(self.pass_type(name), TAKEN, note="the export stage: the onnxruntime-genai builder on the AWQ "
                 "checkpoint, LoRA weights as optional inputs")
        self.stages.add("export")
        if "lora" in {k for _, _, k in passes}:
            self.stages.add("adapter")
        prec_at = (*p, "precision")
        precision = str(doc.get(prec_at, "fp32")).lower()
        awq = "awq" in {k for _, _, k in passes}
        merged = "merge" in {k for _, _, k in passes}
        if precision == "int4":
            note = "the AWQ int4 weights" + ("" if awq else " (modelmake's AWQ, calibrated; Olive's builder "
                                             f"RTN-quantizes the {'merged ' if merged else ''}weights)")
            self.row(prec_at, TAKEN if awq and not merged else DIFFERS, {"export.precision": "int4"}, note)
        elif precision == "fp32":
            if awq:
                self.row(prec_at, DIFFERS, {"export.precision": "int4"}, "fp32 activations over AWQ's int4 weights "
                         "(the builder keeps a quantized checkpoint's weights); modelmake's int4 export does the same")
            else:
                self.row(prec_at, DIFFERS, {"export.precision": "fp32"},
                         "modelmake's fp32 graph holds the AWQ weights dequantized (its chain quantizes first)")
        else:
            self.row(prec_at, NOT_TAKEN, {"export.precision": "int4"},
                     f"{precision}: modelmake exports int4 (AWQ) or fp32 graphs; int4 kept")
        self.fields(BUILDER, [p], show(p))

    def merge(self, name: str, p: tuple, passes) -> None:
        # the execution provider's row (inputs) already chose the export; its merged twin
        target = {"int4_cuda": "int4_cuda_merged"}.get(self.values.get("export"), "int4_merged")
        self.stages.add("merged")
        self.row(self.pass_type(name), DIFFERS, {"export": target}, note="the merged stage: the fine-tune's LoRA "
                 "merged into one int4 graph, no adapter file. Olive merges into the dequantized weights and the "
                 "builder rounds them to int4 (export.merge=rtn); modelmake deploys AWQ re-run on the merged fp32 "
                 "weights (export.merge=awq, the default) and evaluate scores both routes")

    def extract(self, name: str, p: tuple, passes) -> None:
        doc = self.doc
        self.stages.update({"export", "adapter"})
        self.row(self.pass_type(name), TAKEN, note="the adapter stage: the LoRA weights as an .onnx_adapter, checked "
                 "against the graph's optional inputs")
        fmt_at = next(((*p, k) for k in ("save_format", "adapter_format") if doc.has((*p, k))), None)
        if fmt_at is not None:
            fmt = str(doc.get(fmt_at))
            self.row(fmt_at, TAKEN if fmt == "onnx_adapter" else NOT_TAKEN,
                     note="" if fmt == "onnx_adapter" else f"{fmt}: modelmake writes .onnx_adapter files")
        kind_at = (*p, "adapter_type")
        if doc.has(kind_at):
            kind = str(doc.get(kind_at)).lower()
            if kind != "lora":
                raise doc.refuse(kind_at, f"{kind}: modelmake trains and extracts LoRA adapters")
            self.row(kind_at, TAKEN)

    def other(self, name: str, p: tuple, passes) -> None:
        t = self.pass_type(name)
        kind = self.doc.get(t)
        self.unmapped[p] = f"a setting of {show(p)} ({kind}), which has no modelmake equivalent"
        quant = re.search(r"quant|gptq|rtn|hqq|bnb|quarot|spinquant", str(kind), re.I)
        self.row(t, NO_EQUIVALENT, note=("modelmake quantizes with AWQ only" if quant else
                                         "no modelmake stage does this") + " (--strict refuses)")
