"""Cache clients benchmark: moving a model folder to and from Azure Blob, per Python client.

    python bench/cache_clients.py [--source DIR] [--repeats 1] [--blobs 1000]

Against a local Azurite (tests/helpers/azurite.py starts it, its data in a temporary folder), with
the SmolLM2 base folder (artifacts/base/<key>/model: a 538 MB model.safetensors and its small
files; the first one found here or under /tmp/*/, or --source; without any, 538 MB of random bytes
under the same name, and the table says so):
- floor: a plain local copy of the same files (shutil.copyfile, same disk, no fsync);
- azure-storage-blob: upload_blob / download_blob().readinto with max_concurrency 1 and 4 (the
  client's default chunking: 4 MiB blocks above 64 MiB, 4 MiB ranges after the first 32 MiB);
- adlfs (fsspec): fs.put / fs.get of the folder, at its default (max_concurrency 1 per file in
  put/get) and with max_concurrency=4.
Every download is checked against the sources' sha256 (outside the timing). Then the cost of
listing `--blobs` small blobs under one prefix with each client, and whether each one's conditional
create (create-if-absent) refuses a second writer. MB = 10^6 bytes. Prints the table and writes it
to its section of bench/RESULTS.md (`bench:cache-clients`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import REPO, aligned, md_table, median, parser, save_json, write_section
from helpers.azurite import VERSION as AZURITE_VERSION
from helpers.azurite import azurite

SIZE = 538_090_408  # the SmolLM2-135M base's model.safetensors (fp32), bytes
MB = 1e6


# --- the bytes -------------------------------------------------------------------------------

def smollm2_folder(path: Path) -> bool:
    """Whether `path` is a SmolLM2-135M base folder: a ~538 MB model.safetensors, a Llama config."""
    weights = path / "model.safetensors"
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (weights.is_file() and abs(weights.stat().st_size - SIZE) < 5_000_000
            and "LlamaForCausalLM" in config.get("architectures", []) and config.get("hidden_size") == 576)


def find_source() -> Path | None:
    candidates = [*sorted(REPO.glob("artifacts/base/*/model")), *sorted(Path("/tmp").glob("*/artifacts/base/*/model"))]
    return next((p for p in candidates if smollm2_folder(p)), None)


def random_folder(dst: Path) -> Path:
    """538 MB of random bytes named model.safetensors (when no SmolLM2 base is built here)."""
    dst.mkdir(parents=True)
    with open(dst / "model.safetensors", "wb") as f:
        for left in range(SIZE, 0, -2**24):
            f.write(os.urandom(min(left, 2**24)))
    return dst


def files_of(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**22):
            h.update(chunk)
    return h.hexdigest()


def verify(got: Path, want: dict[str, str], what: str) -> None:
    have = files_of(got)
    if set(have) != set(want):
        sys.exit(f"{what}: downloaded {sorted(have)}, expected {sorted(want)}")
    for name, digest in want.items():
        if sha256(have[name]) != digest:
            sys.exit(f"{what}: {name} differs from its source (sha256)")


# --- the transfers ---------------------------------------------------------------------------

def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def local_copy(src: Path, dst: Path) -> None:
    for name, path in files_of(src).items():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / name)


def blob_upload(container, src: Path, prefix: str, concurrency: int) -> None:
    for name, path in files_of(src).items():
        with open(path, "rb") as f:
            container.upload_blob(f"{prefix}/{name}", f, length=path.stat().st_size, overwrite=True,
                                  max_concurrency=concurrency)


def blob_download(container, prefix: str, dst: Path, concurrency: int) -> None:
    for blob in container.list_blobs(name_starts_with=f"{prefix}/"):
        out = dst / blob.name[len(prefix) + 1:]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            container.download_blob(blob.name, max_concurrency=concurrency).readinto(f)


def client_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def measure(az, src: Path, want: dict[str, str], work: Path, repeats: int) -> list[dict]:
    from azure.storage.blob import BlobServiceClient

    total = sum(p.stat().st_size for p in files_of(src).values())
    rows: list[dict] = []

    def record(client: str, direction: str, seconds: list[float]) -> None:
        s = median(seconds)
        rows.append({"client": client, "direction": direction, "seconds": s, "mb_s": total / MB / s,
                     "bytes": total, "runs": seconds})
        print(f"  {client:<32} {direction:<9} {total / MB / s:8.1f} MB/s  {s:6.2f} s", file=sys.stderr)

    def fresh(name: str) -> Path:
        path = work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    times = []
    for _ in range(repeats):
        dst = fresh("copy")
        times.append(timed(lambda dst=dst: local_copy(src, dst)))
        verify(dst, want, "local copy")
    shutil.rmtree(work / "copy")
    record("local copy (shutil.copyfile)", "copy", times)

    service = BlobServiceClient.from_connection_string(az.connection_string, connection_timeout=10, read_timeout=120)
    for n in (1, 4):
        container = service.create_container(f"blob-c{n}")
        up, down = [], []
        for _ in range(repeats):
            up.append(timed(lambda n=n, container=container: blob_upload(container, src, "base", n)))
            dst = fresh(f"blob-c{n}")
            down.append(timed(lambda n=n, container=container, dst=dst: blob_download(container, "base", dst, n)))
            verify(dst, want, f"azure-storage-blob max_concurrency={n}")
        shutil.rmtree(work / f"blob-c{n}")
        container.delete_container()
        record(f"azure-storage-blob c={n}", "upload", up)
        record(f"azure-storage-blob c={n}", "download", down)

    try:
        from adlfs import AzureBlobFileSystem
    except ImportError:
        print("adlfs is not installed: skipped (pip install adlfs)", file=sys.stderr)
        return rows
    for n in (None, 4):
        label = "adlfs default" if n is None else f"adlfs c={n}"
        fs = AzureBlobFileSystem(connection_string=az.connection_string, skip_instance_cache=True)
        container = f"adlfs-{n or 'default'}"
        fs.mkdir(container)
        kw = {} if n is None else {"max_concurrency": n}
        up, down = [], []
        for _ in range(repeats):
            up.append(timed(lambda container=container, kw=kw, fs=fs: fs.put(f"{src}/", f"{container}/base/",
                                                                           recursive=True, **kw)))
            fs.invalidate_cache()
            dst = fresh(container)
            down.append(timed(lambda container=container, kw=kw, fs=fs, dst=dst: fs.get(f"{container}/base/", f"{dst}/",
                                                                                       recursive=True, **kw)))
            verify(dst, want, label)
        shutil.rmtree(work / container)
        fs.rm(container, recursive=True)
        record(label, "upload", up)
        record(label, "download", down)
    return rows


# --- listing and conditional create --------------------------------------------------------

def listing(az, blobs: int) -> list[dict]:
    """Seconds to list `blobs` small blobs under one prefix: azure-storage-blob's list_blobs
    (flat, pages of 5000) and adlfs's find (hierarchical walk, metadata included) and ls."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(az.connection_string)
    container = service.create_container("listing")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: container.upload_blob(f"keys/{i:06d}.json", b"{}"), range(blobs)))
    made = time.perf_counter() - t0
    rows = [{"client": "azure-storage-blob", "operation": f"create {blobs} blobs (8 threads)", "seconds": made}]
    for _ in range(2):  # the first pays the connection
        t0 = time.perf_counter()
        names = [b.name for b in container.list_blobs(name_starts_with="keys/")]
        s = time.perf_counter() - t0
    assert len(names) == blobs
    rows.append({"client": "azure-storage-blob", "operation": "list_blobs(name_starts_with)", "seconds": s})
    try:
        from adlfs import AzureBlobFileSystem
    except ImportError:
        return rows
    fs = AzureBlobFileSystem(connection_string=az.connection_string, skip_instance_cache=True)
    calls = (("find(prefix)", lambda: fs.find("listing/keys/")), ("ls(prefix)", lambda: fs.ls("listing/keys/")))
    for op, call in calls:
        for _ in range(2):
            fs.invalidate_cache()
            t0 = time.perf_counter()
            found = call()
            s = time.perf_counter() - t0
        assert len(found) == blobs, (op, len(found))
        rows.append({"client": "adlfs", "operation": op + ", cache cleared", "seconds": s})
    container.delete_container()
    return rows


def conditional_create(az) -> list[dict]:
    """What a second create-if-absent of an existing name answers, per client."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(az.connection_string).create_container("cond")
    container.upload_blob("k", b"first", overwrite=False)
    try:
        container.upload_blob("k", b"second", overwrite=False)
        blob = "second write accepted (no conditional create)"
    except ResourceExistsError as e:
        blob = f"ResourceExistsError {e.status_code} (upload_blob overwrite=False: If-None-Match *)"
    rows = [{"client": "azure-storage-blob", "second create": blob}]
    try:
        from adlfs import AzureBlobFileSystem
    except ImportError:
        return rows
    fs = AzureBlobFileSystem(connection_string=az.connection_string, skip_instance_cache=True)

    def pipe(path: str, data: bytes) -> None:
        fs.pipe_file(path, data, mode="create")

    def open_xb(path: str, data: bytes) -> None:
        with fs.open(path, "xb") as f:
            f.write(data)

    answers = []
    for how, write, path in (("pipe_file(mode='create')", pipe, "cond/a"), ("open('xb')", open_xb, "cond/b")):
        write(path, b"first")
        try:
            write(path, b"second")
            answer = "second write accepted"
        except FileExistsError:
            answer = "FileExistsError"
        fs.invalidate_cache()
        answers.append(f"{how}: {answer}, content {'kept' if fs.cat_file(path) == b'first' else 'REPLACED'}")
    rows.append({"client": "adlfs", "second create": "; ".join(answers)})
    container.delete_container()
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--source", type=Path, help="a model folder (default: a SmolLM2 base built here)")
    p.add_argument("--repeats", type=int, default=1, help="runs per transfer; the table shows the median")
    p.add_argument("--blobs", type=int, default=1000, help="small blobs for the listing cost")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="cache-clients-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        src = args.source or find_source()
        if src is None:
            src = random_folder(tmp / "random" / "model")
            what = f"538 MB of random bytes named model.safetensors (no SmolLM2 base built here): `{src.name}`"
        else:
            what = f"the SmolLM2-135M base folder `{src}`"
        print(f"source: {src}", file=sys.stderr)
        want = {name: sha256(path) for name, path in files_of(src).items()}  # also warms the page cache
        total = sum(p.stat().st_size for p in files_of(src).values())
        with azurite(tmp / "azurite") as az:
            rows = measure(az, src, want, tmp / "work", args.repeats)
            lists = listing(az, args.blobs)
            cond = conditional_create(az)

    versions = {"azurite": AZURITE_VERSION, "azure-storage-blob": client_version("azure-storage-blob"),
                "adlfs": client_version("adlfs"), "fsspec": client_version("fsspec"),
                "azure-core": client_version("azure-core"), "aiohttp": client_version("aiohttp")}
    save_json("cache_clients", {"source": str(src), "bytes": total, "versions": versions, "transfers": rows,
                                "listing": lists, "conditional_create": cond})
    header = ["client", "direction", "MB/s", "seconds"]
    table = [[r["client"], r["direction"], f"{r['mb_s']:.1f}", f"{r['seconds']:.2f}"] for r in rows]
    list_table = [[r["client"], r["operation"], f"{r['seconds']:.3f}"] for r in lists]
    print("\n".join(aligned(table, header)))
    print()
    print("\n".join(aligned(list_table, ["client", "listing", "seconds"])))
    print()
    print("\n".join(aligned([[r["client"], r["second create"]] for r in cond], ["client", "second create"])))
    write_section("cache-clients", "Cache clients: Azure Blob throughput (local Azurite)", "\n\n".join([
        f"{total / MB:.0f} MB ({len(want)} files): {what}; median of {args.repeats} run(s) per row; "
        f"every download checked by sha256. Azurite {AZURITE_VERSION} on 127.0.0.1 (its data on the same "
        f"disk); {', '.join(f'{k} {v}' for k, v in versions.items() if k != 'azurite')}. MB = 10^6 bytes.",
        md_table(header, table, "llrr"),
        f"Listing {args.blobs} small blobs under one prefix:",
        md_table(["client", "listing", "seconds"], list_table, "llr"),
        "A second create-if-absent of an existing name:",
        md_table(["client", "second create"], [[r["client"], r["second create"]] for r in cond]),
    ]))


if __name__ == "__main__":
    main()
