"""The shared artifact cache: an artifact built once is reused by every machine that asks for its key.

Layout, under a prefix of a folder or an Azure Blob container (docs/cache.md):

    blobs/sha256/<2 hex>/<sha256>           every file's content, by its own sha256
    entries/<stage>/<full digest>.json      one artifact: its manifest's sha256, each file's sha256 and size

Contents are written first and are idempotent (the same sha256 is the same bytes, whoever writes
it); the entry is created last, only if absent (a folder: a hard link that fails if the name exists;
Azure: a create without overwrite, which answers 409), so a reader never sees an entry whose files
are not all there and the first complete entry of a key wins. Builds are deterministic but not
guaranteed byte-identical across machines: two publishers never mix files, because an entry names
its files by content.

Nothing that crosses the wire is trusted: a pull downloads into the artifact's temporary folder and
checks every file's size and sha256 against the entry, the manifest against the entry, and the
manifest's stage, key, digest, config, input keys and code version against the node's own, before
the folder is renamed into place; any mismatch is refused, named, and the stage is built here.

Credentials come only from the environment (AZURE_STORAGE_CONNECTION_STRING; or AZURE_STORAGE_ACCOUNT
with AZURE_STORAGE_SAS_TOKEN, or with DefaultAzureCredential: `az login`, a managed identity), never
from config, and are scrubbed from every message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import MANIFEST
from modelmake.core.paths import ROOT

ENV = "MODELMAKE_CACHE"          # the cache URL for this build and its stage processes (wins over config)
ENV_PUSH, ENV_PULL, ENV_REQUIRED = "MODELMAKE_CACHE_PUSH", "MODELMAKE_CACHE_PULL", "MODELMAKE_CACHE_REQUIRED"
SCHEMES = ("az://", "azure://", "file://")
CHUNK = 4 << 20


class CacheError(Exception):
    """The cache could not answer (unreachable, refused, out of space): the build goes on without it."""


class Refused(CacheError):
    """The cache answered with an entry that does not verify: it is not used."""


@dataclass(frozen=True)
class Setting:
    url: str
    push: bool = True
    pull: bool = True
    required: bool = False   # a cache that cannot answer stops the build instead of being skipped

    def env(self) -> dict[str, str]:
        """The setting as the environment of stage processes (stage commands carry only key-moving
        overrides, and the cache moves no key)."""
        return {ENV: self.url, ENV_PUSH: str(int(self.push)), ENV_PULL: str(int(self.pull)),
                ENV_REQUIRED: str(int(self.required))}


def check_url(url: str, field: str = "cache.url") -> str:
    """A cache URL's form, checked at plan time: az://<container>[/<prefix>], file:///<path> or a folder."""
    if not isinstance(url, str) or not url.strip():
        raise ModelmakeError(f"config field '{field}': must name a cache (az://container/prefix or a folder)")
    if "://" in url and not url.startswith(SCHEMES):
        raise ModelmakeError(f"config field '{field}': unknown scheme in {url!r} (use az://container/prefix, "
                             "file:///path or a folder path)")
    if url.startswith(("az://", "azure://")):
        container = url.split("://", 1)[1].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", container):
            raise ModelmakeError(f"config field '{field}': {container!r} in {url!r} is not an Azure container name "
                                 "(3-63 lower-case letters, digits and single hyphens)")
    return url


def setting(cfg=None, environ: dict | None = None) -> Setting | None:
    """The cache this process uses: $MODELMAKE_CACHE (and its flags) where set, else the config's
    `cache` group; None for no cache."""
    environ = os.environ if environ is None else environ
    flag = lambda name, default: environ.get(name, str(int(default))) not in ("0", "false", "")  # noqa: E731
    c = cfg.get("cache") if cfg is not None else None
    url = environ.get(ENV) or (c.url if c is not None and c.get("url") else None)
    if not url:
        return None
    push = bool(c.push) if c is not None else True
    pull = bool(c.pull) if c is not None else True
    required = bool(c.required) if c is not None else False
    return Setting(check_url(url, ENV if environ.get(ENV) else "cache.url"), flag(ENV_PUSH, push),
                   flag(ENV_PULL, pull), flag(ENV_REQUIRED, required))


def scrub(text: str) -> str:
    """A message without secrets: SAS signatures, account keys, connection strings, bearer tokens."""
    text = re.sub(r"(sig|AccountKey|SharedAccessSignature|se|sp|sv|skoid|sktid)=[^&;\s'\"]+", r"\1=***", text)
    text = re.sub(r"Authorization:\s*(?:Bearer\s+)?\S+", "Authorization: ***", text)
    return re.sub(r"Bearer\s+\S+", "Bearer ***", text)


# --- stores -----------------------------------------------------------------------------------
class FolderStore:
    """A cache on a folder every machine mounts (NFS, a shared disk)."""

    def __init__(self, url: str):
        path = url[len("file://"):] if url.startswith("file://") else url
        self.root = Path(path) if Path(path).is_absolute() else ROOT / path
        self.url = url

    def _entry(self, stage: str, digest: str) -> Path:
        return self.root / "entries" / stage / f"{digest}.json"

    def _blob(self, sha: str) -> Path:
        return self.root / "blobs" / "sha256" / sha[:2] / sha

    def entries(self) -> set[str]:
        base = self.root / "entries"
        try:
            return {f"{d.name}/{f.name[:-5]}" for d in base.iterdir() if d.is_dir()
                    for f in d.iterdir() if f.name.endswith(".json")}
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise CacheError(f"cannot list {base}: {e.strerror}") from None

    def get_entry(self, stage: str, digest: str) -> bytes | None:
        try:
            return self._entry(stage, digest).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CacheError(f"cannot read {self._entry(stage, digest)}: {e.strerror}") from None

    def has_blob(self, sha: str) -> bool:
        return self._blob(sha).is_file()

    def put_blob(self, sha: str, src: Path) -> None:
        self._put(self._blob(sha), src.read_bytes() if src.stat().st_size < CHUNK else None, src, replace=True)

    def put_entry(self, stage: str, digest: str, data: bytes) -> bool:
        return self._put(self._entry(stage, digest), data, None, replace=False)

    def _put(self, final: Path, data: bytes | None, src: Path | None, replace: bool) -> bool:
        """Write via a temporary file beside `final`; replace=False creates it only if absent."""
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    if data is not None:
                        f.write(data)
                    else:
                        with open(src, "rb") as fi:
                            shutil.copyfileobj(fi, f, CHUNK)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o444)
                if replace:
                    os.replace(tmp, final)
                    return True
                try:
                    os.link(tmp, final)  # atomic create-if-absent: the first complete entry wins
                    return True
                except FileExistsError:
                    return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as e:
            raise CacheError(f"cannot write {final}: {e.strerror}") from None

    def get_blob(self, sha: str, dest: Path, progress) -> None:
        try:
            with open(self._blob(sha), "rb") as fi, open(dest, "wb") as fo:
                for chunk in iter(lambda: fi.read(CHUNK), b""):
                    fo.write(chunk)
                    progress(len(chunk))
        except FileNotFoundError:
            raise CacheError(f"blob {sha[:12]} is missing from {self.url}") from None

    def listing(self) -> Iterator[tuple[str, float]]:
        """(relative name, last modified, epoch seconds) of everything stored, for the garbage collector."""
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                yield str(p.relative_to(self.root)), p.stat().st_mtime

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()


# url -> why: a server that refused or dropped a connection (after the retries) is not asked again
# by this process, so a stage whose inputs all try the cache pays for one outage, not one per call
_UNREACHABLE: dict[str, str] = {}


class AzureStore:
    """A cache in an Azure Blob Storage container (or Azurite, its emulator)."""

    def __init__(self, url: str):
        rest = url.split("://", 1)[1]
        self.container_name, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url
        self._client = None

    def container(self):
        if self._client is None:
            from azure.storage.blob import BlobServiceClient, ExponentialRetry

            # every request's headers at INFO would fill the stage's log; its errors still reach it
            logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
            # a server gone or unreachable answers within seconds, not after minutes of retries (the
            # storage SDK's own policy waits 15 s + 3^n s before each retry)
            retry = ExponentialRetry(initial_backoff=0.5, increment_base=1.5, retry_total=2, random_jitter_range=0.5)
            kw = {"retry_policy": retry, "connection_timeout": 5, "read_timeout": 60}
            conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            try:
                if conn:
                    service = BlobServiceClient.from_connection_string(conn, **kw)
                else:
                    account = os.environ.get("AZURE_STORAGE_ACCOUNT")
                    if not account:
                        raise CacheError("no credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
                                         "AZURE_STORAGE_ACCOUNT (with AZURE_STORAGE_SAS_TOKEN, or `az login` / a "
                                         "managed identity)")
                    endpoint = os.environ.get("AZURE_STORAGE_BLOB_ENDPOINT", f"https://{account}.blob.core.windows.net")
                    sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
                    if sas:
                        credential = sas.lstrip("?")
                    else:
                        from azure.identity import DefaultAzureCredential

                        credential = DefaultAzureCredential()
                    service = BlobServiceClient(endpoint, credential=credential, **kw)
            except CacheError:
                raise
            except Exception as e:  # a malformed connection string, a missing identity library
                raise CacheError(scrub(f"{type(e).__name__}: {e}").splitlines()[0]) from None
            self._client = service.get_container_client(self.container_name)
        return self._client

    def _call(self, what: str, fn, expected: tuple = ()):
        """fn(); an Azure or OS error becomes one CacheError line naming `what`, except the
        `expected` ones (an existing blob, a missing entry), which the caller answers itself."""
        from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError

        if self.url in _UNREACHABLE:
            raise CacheError(f"{what}: {_UNREACHABLE[self.url]} (earlier in this process: not asked again)")
        try:
            return fn()
        except CacheError:
            raise
        except expected:
            raise
        except (ServiceRequestError, ServiceResponseError) as e:  # no connection, or it broke: retried already
            first = (str(e).splitlines() or [type(e).__name__])[0]
            _UNREACHABLE[self.url] = scrub(f"{type(e).__name__}: {first}")
            raise CacheError(scrub(f"{what}: {type(e).__name__}: {first}")) from None
        except AzureError as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise CacheError(scrub(f"{what}: {type(e).__name__}: {first}")) from None
        except OSError as e:
            raise CacheError(scrub(f"{what}: {e}")) from None

    def entries(self) -> set[str]:
        start = f"{self.prefix}entries/"

        def listing():
            names = set()
            for b in self.container().list_blobs(name_starts_with=start):
                rel = b.name[len(start):]
                if rel.endswith(".json") and "/" in rel:
                    names.add(rel[:-5])
            return names

        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._call("listing the cache", listing, (ResourceNotFoundError,))
        except ResourceNotFoundError:  # no container yet: an empty cache
            return set()

    def get_entry(self, stage: str, digest: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.container().get_blob_client(f"{self.prefix}entries/{stage}/{digest}.json")
        try:
            return self._call(f"reading entry {stage}/{digest[:12]}", lambda: blob.download_blob().readall(),
                              (ResourceNotFoundError,))
        except ResourceNotFoundError:
            return None

    def has_blob(self, sha: str) -> bool:
        blob = self.container().get_blob_client(f"{self.prefix}blobs/sha256/{sha[:2]}/{sha}")
        return bool(self._call(f"asking for blob {sha[:12]}", blob.exists))

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._call("creating the container", self.container().create_container, (ResourceExistsError,))

    def put_blob(self, sha: str, src: Path) -> None:
        from azure.core.exceptions import ResourceExistsError

        self._ensure_container()
        blob = self.container().get_blob_client(f"{self.prefix}blobs/sha256/{sha[:2]}/{sha}")
        with open(src, "rb") as f:
            with contextlib.suppress(ResourceExistsError):  # content-addressed: the same bytes
                self._call(f"uploading {src.name}", lambda: blob.upload_blob(f, overwrite=False, max_concurrency=4),
                           (ResourceExistsError,))

    def put_entry(self, stage: str, digest: str, data: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError

        self._ensure_container()
        blob = self.container().get_blob_client(f"{self.prefix}entries/{stage}/{digest}.json")
        try:
            self._call(f"publishing entry {stage}/{digest[:12]}", lambda: blob.upload_blob(data, overwrite=False),
                       (ResourceExistsError,))
            return True
        except ResourceExistsError:  # another machine published this key first: its entry stands
            return False

    def get_blob(self, sha: str, dest: Path, progress) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.container().get_blob_client(f"{self.prefix}blobs/sha256/{sha[:2]}/{sha}")

        def download():
            with open(dest, "wb") as f:
                for chunk in blob.download_blob(max_concurrency=4).chunks():
                    f.write(chunk)
                    progress(len(chunk))

        try:
            self._call(f"downloading blob {sha[:12]}", download, (ResourceNotFoundError,))
        except ResourceNotFoundError:
            raise CacheError(f"blob {sha[:12]} is missing from {self.url}") from None

    def listing(self) -> Iterator[tuple[str, float]]:
        blobs = self._call("listing the cache", lambda: list(self.container().list_blobs(name_starts_with=self.prefix)))
        for b in blobs:
            yield b.name[len(self.prefix):], b.last_modified.timestamp()

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._call(f"deleting {name}", lambda: self.container().delete_blob(f"{self.prefix}{name}"),
                       (ResourceNotFoundError,))


def store(url: str):
    return AzureStore(url) if url.startswith(("az://", "azure://")) else FolderStore(url)


# --- pull and publish -------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_of(folder: Path, manifest: dict) -> dict:
    """The cache entry for a finished artifact folder: the manifest and every file, by content."""
    files = {rel: {"sha256": sha, "size": (folder / rel).stat().st_size} for rel, sha in manifest["files"].items()}
    m = folder / MANIFEST
    return {"stage": manifest["stage"], "key": manifest["key"], "digest": manifest["digest"],
            "manifest": {"sha256": sha256_file(m), "size": m.stat().st_size}, "files": files}


class Transfer:
    """Bytes moved, shown as a progress bar on stderr (the stage's log: the build's view reads it)."""

    def __init__(self, what: str, total: int):
        from tqdm import tqdm

        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.bar = tqdm(total=max(1, total // 1_000_000), desc=what, unit="MB", mininterval=1, file=sys.stderr)

    def __call__(self, n: int) -> None:
        before = self.done // 1_000_000
        self.done += n
        self.bar.update(self.done // 1_000_000 - before)

    def close(self) -> dict:
        self.bar.close()
        seconds = time.perf_counter() - self.t0
        return {"bytes": self.done, "seconds": round(seconds, 3),
                "mb_per_s": round(self.done / 1e6 / seconds, 1) if seconds > 0 else None}


def pull(node, st, tmp: Path) -> dict | None:
    """Download `node`'s entry into `tmp` (its temporary folder) and verify it whole; returns the
    transfer's figures, or None where the cache has no entry. Raises Refused on anything that does
    not match, CacheError where the cache cannot answer (tmp is then discarded)."""
    raw = st.get_entry(node.stage, node.digest)
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        files, man = entry["files"], entry["manifest"]
    except (ValueError, KeyError, TypeError):
        raise Refused("its entry is not valid") from None
    if (entry.get("stage"), entry.get("digest")) != (node.stage, node.digest):
        raise Refused(f"its entry is {entry.get('stage')} {str(entry.get('digest'))[:12]}, published under "
                         f"{node.stage} {node.digest[:12]}")
    bad = [rel for rel in [*files, MANIFEST] if Path(rel).is_absolute() or ".." in Path(rel).parts]
    if bad:
        raise Refused(f"its entry names a path outside the artifact: {bad[0]}")
    transfer = Transfer(f"pull {node.stage}", sum(f["size"] for f in files.values()) + man["size"])
    try:
        for rel, f in sorted(files.items()) + [(MANIFEST, man)]:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                st.get_blob(f["sha256"], dest, transfer)
            except CacheError as e:
                if "is missing from" in str(e):
                    raise Refused(f"{rel}: {e}") from None
                raise
            size, sha = dest.stat().st_size, sha256_file(dest)
            if size != f["size"]:
                raise Refused(f"{rel}: {size} bytes, its entry says {f['size']} (truncated or altered)")
            if sha != f["sha256"]:
                raise Refused(f"{rel}: sha256 {sha[:12]}, its entry says {f['sha256'][:12]} (altered)")
    finally:
        figures = transfer.close()
    manifest = json.loads((tmp / MANIFEST).read_text())
    if manifest.get("files") != {rel: f["sha256"] for rel, f in files.items()}:
        extra = sorted(set(files) ^ set(manifest.get("files") or {}))
        raise Refused(f"its files differ from its manifest's ({', '.join(extra[:3]) or 'by content'})")
    mine = node.provenance()
    for field in ("stage", "key", "digest", "config", "data", "inputs"):
        if manifest.get(field) != mine[field]:
            raise Refused(f"its manifest's {field} is not this artifact's (an entry published under the wrong key)")
    if manifest.get("code", {}).get("sha256") != mine["code"]["sha256"]:
        raise Refused("its manifest's code version is not this artifact's")
    return figures


def publish(node, st, folder: Path, manifest: dict) -> dict:
    """Put a finished artifact in the cache: its contents first (skipping what is there), then its
    entry, created only if absent. Returns {"published": bool (False: another publisher was first), ...}."""
    entry = entry_of(folder, manifest)
    todo = [(rel, f) for rel, f in entry["files"].items() if not st.has_blob(f["sha256"])]
    if not st.has_blob(entry["manifest"]["sha256"]):
        todo.append((MANIFEST, entry["manifest"]))
    transfer = Transfer(f"push {node.stage}", sum(f["size"] for _, f in todo))
    try:
        for rel, f in todo:
            st.put_blob(f["sha256"], folder / rel)
            transfer(f["size"])
    finally:
        figures = transfer.close()
    created = st.put_entry(node.stage, node.digest, json.dumps(entry, sort_keys=True, indent=1).encode())
    return figures | {"published": created, "files_uploaded": len(todo)}
