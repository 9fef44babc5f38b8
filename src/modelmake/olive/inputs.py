"""The input model and the system the workflow's output runs on."""

from __future__ import annotations

from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.olive.data import project_path
from modelmake.olive.document import show
from modelmake.olive.settings import AZUREML, DIFFERS, HF_URL, HUB_ID, NOT_TAKEN, PHI35, TAKEN


class InputMapping:
    """Mapper's part for `input_model`, `systems` and the engine's execution providers."""

    def model(self) -> None:
        doc = self.doc
        if not isinstance(doc.get(("input_model",)), dict):
            raise ModelmakeError(f"{doc.source}: no input_model: an Olive workflow names the model it starts from "
                                 "(input_model: {type: HfModel, model_path: ...})")
        im = ("input_model",)
        p = doc.params(im)
        kind = str(doc.get((*im, "type"), "HfModel"))
        if kind.lower() not in ("hfmodel", "pytorchmodel"):
            raise doc.refuse((*im, "type"), f"{kind}: modelmake starts from a Hugging Face model (HfModel, or "
                             "PyTorchModel with hf_config)")
        if doc.has((*im, "type")):
            self.row((*im, "type"), TAKEN, note="a Hugging Face causal LM")
        hf = (*p, "hf_config")  # the oldest layout's Hugging Face model
        hf_args = [s for s in ((*hf, "from_pretrained_args"), (*hf, "model_loading_args"), (*p, "load_kwargs"),
                               (*p, "load_kwargs", "extra_args")) if isinstance(doc.get(s), dict)]
        where = next((q for q in ((*p, "model_path"), (*hf, "model_name")) if doc.get(q) not in (None, "")), None)
        if where is None:
            code = [show(q) for q in ((*p, "model_script"), (*p, "model_loader")) if doc.has(q)]
            why = f" (it names only {', '.join(code)}: modelmake runs no config-supplied code)" if code else ""
            raise doc.refuse(im, f"no model to start from: neither model_path nor hf_config.model_name{why}")
        if where[-1] == "model_path" and doc.has((*hf, "model_name")):  # weights from model_path, named by hf_config
            self.row((*hf, "model_name"), TAKEN, note="the model's hub name; the weights come from model_path")
        for q in ((*p, "task"), (*hf, "task")):
            if doc.has(q):
                task = doc.get(q)
                self.row(q, TAKEN if task == "text-generation" else NOT_TAKEN,
                         note="" if task == "text-generation" else f"modelmake builds causal language models "
                         f"(text-generation), not {task}")
        rev_at = next(((*s, "revision") for s in hf_args if doc.has((*s, "revision"))), None)
        revision = doc.get(rev_at) if rev_at else None
        self.model_source(where, doc.get(where), revision)
        if rev_at:
            self.row(rev_at, TAKEN if not self.opt.revision and not self.opt.model else NOT_TAKEN,
                     note="" if not self.opt.revision and not self.opt.model else "replaced (--revision, --model)")
        trust_at = next(((*s, "trust_remote_code") for s in hf_args if doc.has((*s, "trust_remote_code"))), None)
        if trust_at is not None:
            self.trust(trust_at, doc.get(trust_at))
        if doc.has((*p, "adapter_path")):
            raise doc.refuse((*p, "adapter_path"), "an input model with an adapter already trained: modelmake trains "
                             "its own adapter (finetune); start from the base model")

    def model_source(self, where: tuple, value, revision) -> None:
        if self.opt.model:
            self.row(where, DIFFERS, {"model": self.opt.model},
                     f"--model {self.opt.model}: the Olive model is replaced by conf/model/{self.opt.model}.yaml")
            return
        if isinstance(value, dict):  # {type: azureml_registry_model, name, registry_name, version} (maybe in config)
            reg = value.get("config", value) if isinstance(value.get("config"), dict) else value
            if str(value.get("type", "")).lower() != "azureml_registry_model" or not reg.get("name"):
                raise self.doc.refuse(where, f"{value!r}: modelmake reads a hub id, a local folder or an Azure ML "
                                      "registry model")
            return self.azureml(where, str(reg["name"]), reg.get("registry_name", "azureml"), reg.get("version"))
        value = str(value)
        if m := AZUREML.match(value):
            return self.azureml(where, m["name"], m["registry"], m["version"])
        if m := HF_URL.match(value):
            value = m["id"]
        folder = Path(value) if Path(value).is_absolute() else self.opt.base / value
        if folder.is_dir():
            self.row(where, TAKEN, {"model": "phi35_mini", "model.source": project_path(folder), "model.revision": None,
                                    "model.name": folder.name.lower()},
                     "a local Hugging Face folder (keyed by the sha256 of its files; model=phi35_mini is modelmake's "
                     "pretrained-model group)" + ("; --revision does not apply" if self.opt.revision else ""))
            return
        if not HUB_ID.match(value):
            raise self.doc.refuse(where, f"{value}: neither a model folder (looked in {self.opt.base}) nor a hub id")
        rev = self.opt.revision or revision
        note = ("pinned by --revision" if self.opt.revision else "the config's revision") if rev else \
            "Olive reads the hub's current files: model.revision=main; pin a commit with --revision SHA"
        became = {"model": "phi35_mini", "model.revision": rev or "main"}
        if value.lower() != PHI35.lower():
            became |= {"model.source": value, "model.name": value.split("/")[-1].lower()}
            note = "a hub id (model=phi35_mini is modelmake's pretrained-model group); " + note
        self.row(where, TAKEN, became, note)

    def azureml(self, where: tuple, name: str, registry: str, version) -> None:
        folder = f"models/{name}"
        cmd = (f"az ml model download --name {name} --version {version} --registry-name {registry} "
               f"--download-path {folder}")
        self.row(where, DIFFERS, {"model": "phi35_mini", "model.source": folder, "model.revision": None,
                                  "model.name": name.split("/")[-1].lower()},
                 f"an Azure ML registry model (documented, untested): download it first ({cmd}) and point "
                 "model.source at the folder that holds its config.json")
        self.warnings.append(f"{self.doc.label(where)}: Azure ML registry model {registry}/{name}:{version}: "
                             f"download it before building: {cmd}")

    def trust(self, path: tuple, value) -> None:
        if not value:
            self.row(path, TAKEN, note="off, as in modelmake")
        elif self.opt.model:
            self.row(path, NOT_TAKEN, note=f"the model is --model {self.opt.model}")
        elif self.opt.trust_remote_code:
            self.row(path, TAKEN, {"model.trust_remote_code": True}, "kept on by --trust-remote-code")
            self.warnings.append("model.trust_remote_code=true (--trust-remote-code): the model's own Python code "
                                 "from the hub will run in every stage that loads it")
        else:
            self.row(path, NOT_TAKEN, note="kept off: modelmake runs no code shipped with a model unless "
                     "--trust-remote-code confirms it (Phi-3 and Phi-3.5 load without it in Transformers >= 4.40)")

    def system(self) -> None:
        doc = self.doc
        eng = lambda k: ("engine", k) if doc.has(("engine", k)) else (k,)  # noqa: E731
        target_at = eng("target")
        target = doc.get(target_at)
        systems = doc.get(("systems",)) if isinstance(doc.get(("systems",)), dict) else {}
        if isinstance(target, str):
            if target not in systems:
                raise doc.refuse(target_at, f"{target!r} names no system (have: {sorted(systems)})")
            self.row(target_at, TAKEN, note="the system the workflow's output runs on: its execution provider")
            sys_path = ("systems", target)
        elif isinstance(target, dict):
            sys_path = target_at
        elif len(systems) == 1:
            sys_path = ("systems", next(iter(systems)))
        else:
            sys_path = None
        eps, device, eps_at, device_at = [], None, None, None
        if sys_path is not None:
            sp = doc.params(sys_path)
            kind = str(doc.get((*sys_path, "type"), "LocalSystem"))
            if kind.lower() != "localsystem":
                self.row((*sys_path, "type"), NOT_TAKEN, note=f"{kind}: modelmake runs where Snakemake runs: here, "
                         "or one job per stage on a cluster (--profile slurm, docs/clusters.md)")
            elif doc.has((*sys_path, "type")):
                self.row((*sys_path, "type"), TAKEN, note="this machine (or --profile slurm for a cluster)")
            accs = doc.get((*sp, "accelerators")) or []
            if accs and all(isinstance(a, str) for a in accs):  # the guide's AzureML system: accelerators: ["gpu"]
                device_at, device = (*sp, "accelerators"), accs[0]
            elif accs:
                acc = (*sp, "accelerators", 0)
                for i in range(1, len(accs)):
                    self.row((*sp, "accelerators", i), NOT_TAKEN, note="modelmake exports for one execution provider")
                if doc.has((*acc, "device")):
                    device_at, device = (*acc, "device"), doc.get((*acc, "device"))
                if doc.has((*acc, "execution_providers")):
                    eps_at, eps = (*acc, "execution_providers"), doc.get((*acc, "execution_providers"))
        if doc.has(("engine", "execution_providers")):  # the oldest layout: the engine's list decides
            if eps_at is not None:
                self.row(eps_at, TAKEN, note="engine.execution_providers decides")
            eps_at, eps = ("engine", "execution_providers"), doc.get(("engine", "execution_providers"))
        self.provider(eps_at, eps, device_at, device)

    def provider(self, eps_at, eps, device_at, device) -> None:
        eps = [eps] if isinstance(eps, str) else list(eps or [])
        ep = eps[0] if eps else None
        gpu = str(device).lower() == "gpu"
        if ep is None and not gpu:
            origin = self.doc.label(device_at) if device_at else "(no execution provider)"
            self.row(device_at, TAKEN, {"export": "int4_cpu"}, "CPU, Olive's default", origin=origin)
        elif self.opt.cpu:
            self.row(eps_at or device_at, DIFFERS, {"export": "int4_cpu"},
                     f"--cpu: exported for CPU (the config asks for {ep or device}: export=int4_cuda "
                     "resources=gpu_node)")
        elif ep == "CUDAExecutionProvider" or (ep is None and gpu):
            self.row(eps_at or device_at, TAKEN, {"export": "int4_cuda", "resources": "gpu_node"},
                     "the CUDA export, stages on GPU nodes (conf/resources/gpu_node.yaml)")
        elif ep == "CPUExecutionProvider":
            self.row(eps_at, TAKEN, {"export": "int4_cpu"})
        elif ep == "DmlExecutionProvider":
            self.row(eps_at, TAKEN, {"export": "int4_cpu", "export.execution_provider": "dml"}, "DirectML")
        else:
            self.row(eps_at, NOT_TAKEN, {"export": "int4_cpu"},
                     f"{ep}: modelmake exports for cpu, cuda or dml; kept cpu")
        if device_at and eps_at:
            self.row(device_at, TAKEN, note="with the execution provider")
        if len(eps) > 1:
            self.row(eps_at, NOT_TAKEN, note=f"the rest of {eps}: modelmake exports for one execution provider",
                     value=eps[1:])
