"""Built once per team: the shared cache, on a folder and on Azure Blob Storage (Azurite, the real
emulator, on loopback). A first clone publishes; a second builds nothing but what no cache holds
(register, the report), pulls only what its targets read, and gets the publisher's bytes. What
crossed the wire is verified: a flipped byte, a missing or extra file, an entry under the wrong key
are refused, named, and built here instead; a server gone mid-transfer, wrong credentials and two
publishers at once end in a correct state."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import azurite as az_helper
from helpers.faults import leftovers
from helpers.project import REPO, SECRETS, copy_project, nodes, run
from modelmake.core.errors import ModelmakeError
from modelmake.graph.cache import check_url, scrub
from modelmake.recipe import RECIPE, build_plan

SHARED = [s.name for s in RECIPE.stages if s.shared and s.when is None]  # of the default chain
NOT_READ = {"base", "dataset", "quantize", "quality"}  # by the default targets of a clone that pulls


def modelmake(project: Path, *args: str, env: dict | None = None, timeout: int = 900):
    return run(project, "modelmake", *args, env=env, timeout=timeout)


def actions(project: Path) -> dict[str, list[str]]:
    from modelmake.core.journal import entries

    out: dict[str, list[str]] = {}
    for e in entries(project):
        out.setdefault(e.get("action", "build"), []).append(e["stage"])
    return {k: sorted(v) for k, v in out.items()}


def files_of(node) -> dict[str, bytes]:
    return {str(p.relative_to(node.path)): p.read_bytes() for p in sorted(node.path.rglob("*")) if p.is_file()}


# --- plan-time refusals (nothing built) -------------------------------------------------------
@pytest.mark.parametrize("url,why", [("s3://bucket/x", "unknown scheme"), ("az://Bad_Name/x", "not an Azure container"),
                                     ("ftp://host/x", "unknown scheme")])
def test_a_malformed_cache_url_is_refused_naming_the_field(url, why):
    with pytest.raises(ModelmakeError, match="config field 'cache.url'") as e:
        build_plan(overrides=["cache=folder", f"cache.url={url}"])
    assert why in str(e.value)
    assert check_url("az://modelmake/team") and check_url("/mnt/team/cache")


def test_secrets_are_scrubbed_from_messages():
    line = ("GET https://acct.blob.core.windows.net/c/x?sv=2024&sig=abcDEF%2B123&se=2026 AccountKey=s3cr3t== "
            "Authorization: Bearer eyJabc")
    clean = scrub(line)
    assert "abcDEF" not in clean and "s3cr3t" not in clean and "eyJabc" not in clean and "acct.blob" in clean


# --- a folder cache ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_cache(project, tmp_path_factory):
    """The session's built project, published to a folder cache (what CI's build would do)."""
    cache = tmp_path_factory.mktemp("cache") / "team"
    first = copy_project(tmp_path_factory.mktemp("first") / "modelmake", built=project)
    r = modelmake(first, "cache", "push", "cache=folder", f"cache.url={cache}")
    assert r.returncode == 0 and f"pushed {len(SHARED)} artifact(s)" in r.stdout, r.stderr[-3000:]
    return {"url": str(cache), "first": first}


def fresh_clone(tmp_path: Path, name: str = "second") -> Path:
    return copy_project(tmp_path / name)


def test_a_second_clone_pulls_what_its_targets_read_and_builds_only_register_and_report(folder_cache, tmp_path):
    clone = fresh_clone(tmp_path)
    ov = ("cache=folder", f"cache.url={folder_cache['url']}")
    r = modelmake(clone, "build", *ov, "--", "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    did = actions(clone)
    assert did.get("build") == ["register", "report"], did
    assert set(did["pull"]) == set(SHARED) - NOT_READ, did
    assert "pulled from the cache" in r.stderr
    for stage in NOT_READ:
        assert not (clone / "artifacts" / stage).exists(), stage  # no base folder, nothing unread
    mine, theirs = nodes(clone), nodes(folder_cache["first"])
    for stage in did["pull"]:
        assert files_of(mine[stage]) == files_of(theirs[stage]), stage  # the publisher's bytes
    assert not leftovers(clone)


def test_a_lora_change_on_a_clone_builds_the_lora_stages_and_pulls_what_they_read(folder_cache, tmp_path):
    clone = fresh_clone(tmp_path)
    ov = ("cache=folder", f"cache.url={folder_cache['url']}", "lora.r=16")
    r = modelmake(clone, "build", *ov, "--", "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    did = actions(clone)
    assert did.get("build") == sorted(["finetune", "adapter", "generate", "evaluate", "register", "report"]), did
    assert set(did["pull"]) == {"quantize", "dataset", "export", "quality"}, did  # never base
    assert not (clone / "artifacts" / "base").exists()


def corrupt(cache: Path, clone_node, how: str) -> str:
    """Spoil the cache's entry for `clone_node` one way; returns what the refusal must name."""
    entry_path = cache / "entries" / clone_node.stage / f"{clone_node.digest}.json"
    entry = json.loads(entry_path.read_text())
    rel, f = sorted(entry["files"].items())[0]
    blob = cache / "blobs" / "sha256" / f["sha256"][:2] / f["sha256"]
    if how == "flipped byte":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        return f"{rel}: sha256"
    if how == "missing file":
        blob.unlink()
        return f"{rel}: blob"
    entry_path.chmod(0o644)
    if how == "extra file":
        entry["files"]["extra.bin"] = f
        entry_path.write_text(json.dumps(entry))
        return "its files differ from its manifest's"
    # an entry copied under another key (another stage's, say): its manifest is not this node's
    other = next(p for p in (cache / "entries" / "finetune").iterdir())
    entry_path.write_text(other.read_text())
    return "published under"


@pytest.mark.parametrize("how", ["flipped byte", "missing file", "extra file", "wrong key"])
def test_a_spoiled_cache_entry_is_refused_named_and_built_here(folder_cache, tmp_path, how):
    cache = tmp_path / "cache"
    shutil.copytree(folder_cache["url"], cache)
    clone = fresh_clone(tmp_path)
    node = nodes(clone)["generate"]
    named = corrupt(cache, node, how)
    r = modelmake(clone, "build", "--until", "generate", "cache=folder", f"cache.url={cache}", "--", "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (clone / "logs" / "generate" / f"{node.key}.log").read_text()
    assert f"refusing generate {node.key}" in log and named in log, log[-2000:]
    assert "generate" in actions(clone)["build"]  # built here instead, whole
    assert not leftovers(clone)


def test_two_clones_publishing_one_key_at_once_leave_one_entry_and_both_succeed(project, tmp_path):
    cache = tmp_path / "cache"
    clones = [copy_project(tmp_path / f"c{i}", built=project) for i in range(2)]
    results = [None, None]

    def push(i):
        results[i] = modelmake(clones[i], "cache", "push", "cache=folder", f"cache.url={cache}")

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    entries = sorted(p.relative_to(cache / "entries") for p in (cache / "entries").rglob("*.json"))
    assert len(entries) == len(SHARED)  # one entry a key, whoever came first


def test_a_pull_only_machine_publishes_nothing(folder_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(folder_cache["url"], cache)
    before = sorted(cache.rglob("*"))
    clone = fresh_clone(tmp_path)
    r = modelmake(clone, "build", "cache=folder", f"cache.url={cache}", "cache.push=false", "lora.r=12",
                  "--", "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(cache.rglob("*")) == before and "publish" not in actions(clone)


# --- Azure Blob Storage, against Azurite ------------------------------------------------------
@pytest.fixture(scope="module")
def azurite_server(tmp_path_factory):
    exe, why = az_helper.ensure()
    if exe is None:
        pytest.skip(f"no Azurite: {why}")
    with az_helper.azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


def az_env(server, **extra) -> dict:
    return {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string, **SECRETS, **extra}


@pytest.fixture(scope="module")
def azure_cache(project, azurite_server, tmp_path_factory):
    first = copy_project(tmp_path_factory.mktemp("az-first") / "modelmake", built=project)
    url = "az://modelmake/team"
    r = modelmake(first, "cache", "push", "cache=azure", f"cache.url={url}", env=az_env(azurite_server))
    assert r.returncode == 0 and f"pushed {len(SHARED)} artifact(s)" in r.stdout, r.stderr[-3000:]
    return {"url": url, "first": first, "server": azurite_server}


def test_the_azure_store_answers_what_exists_and_what_is_missing_itself(azurite_server, tmp_path, monkeypatch):
    """The store's own answers on a real server: a second upload of a blob (content-addressed, the
    same bytes) and a second container creation are no error, a second entry for one key is
    refused (False: the first stands), a missing container or entry is an empty cache, a missing
    blob one line naming it."""
    import hashlib

    from modelmake.graph.cache import AzureStore, CacheError

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    store = AzureStore("az://store-answers/team")
    assert store.entries() == set() and store.get_entry("base", "0" * 64) is None  # no container yet
    src = tmp_path / "weights.bin"
    src.write_bytes(b"weights" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    store.put_blob(sha, src)
    store.put_blob(sha, src)
    assert store.has_blob(sha)
    assert store.put_entry("base", "a" * 64, b"{}") is True
    assert store.put_entry("base", "a" * 64, b'{"other": 1}') is False
    assert store.entries() == {f"base/{'a' * 64}"} and store.get_entry("base", "a" * 64) == b"{}"
    with pytest.raises(CacheError, match=f"blob {'f' * 12} is missing from az://store-answers/team"):
        store.get_blob("f" * 64, tmp_path / "out", lambda n: None)


def test_a_server_that_refused_a_connection_is_not_asked_again_by_the_process(monkeypatch):
    """One outage costs a stage one failed call (its retries included), not one per input it tries:
    after a refused connection, the same process's next call to that cache fails at once, naming
    the first failure; another cache URL is still asked."""
    from modelmake.graph import cache as cache_mod

    port = az_helper.free_port()  # nothing listens there
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az_helper.connection_string(port))
    monkeypatch.setattr(cache_mod, "_UNREACHABLE", {})
    down = cache_mod.AzureStore("az://gone/team")
    with pytest.raises(cache_mod.CacheError, match="reading entry base/0000.*Connection refused") as first:
        down.get_entry("base", "0" * 64)
    assert "not asked again" not in str(first.value)
    with pytest.raises(cache_mod.CacheError, match="listing the cache: .*Connection refused.*not asked again"):
        cache_mod.AzureStore("az://gone/team").entries()  # a new store object, the same process
    with pytest.raises(cache_mod.CacheError) as other:
        cache_mod.AzureStore("az://other/team").get_entry("base", "0" * 64)
    assert "not asked again" not in str(other.value)


def test_an_azure_clone_pulls_the_publishers_bytes_and_builds_only_register_and_report(azure_cache, tmp_path):
    clone = fresh_clone(tmp_path)
    env = az_env(azure_cache["server"], MODELMAKE_CACHE=azure_cache["url"])  # the environment alone sets it
    r = modelmake(clone, "build", "--", "--cores", "2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    did = actions(clone)
    assert did.get("build") == ["register", "report"] and set(did["pull"]) == set(SHARED) - NOT_READ, did
    mine, theirs = nodes(clone), nodes(azure_cache["first"])
    for stage in did["pull"]:
        assert files_of(mine[stage]) == files_of(theirs[stage]), stage
    # no secret of the environment in anything this build wrote, nor in the cache
    written = [clone / d for d in ("artifacts", "logs", "registry", ".snakemake")]
    data = b"".join(f.read_bytes() for d in written if d.exists() for f in d.rglob("*") if f.is_file())
    data += b"".join(f.read_bytes() for f in azure_cache["server"].location.rglob("*") if f.is_file())
    key = az_helper.KEY.encode()
    assert key not in data and not any(v.encode() in data for v in SECRETS.values())


def test_wrong_credentials_are_one_line_naming_the_url_and_the_build_goes_on(azure_cache, tmp_path):
    clone = fresh_clone(tmp_path)
    bad = azure_cache["server"].connection_string.replace(az_helper.KEY, "d3Jvbmcga2V5IGZvciB0aGUgdGVzdA==")
    env = {"AZURE_STORAGE_CONNECTION_STRING": bad}
    r = modelmake(clone, "build", "cache=azure", f"cache.url={azure_cache['url']}", "--", "--cores", "2",
                  "--until", "dataset", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [line for line in r.stderr.splitlines() if "warning: cache az://modelmake/team" in line]
    assert warned and "building here" in warned[0] and "d3Jvbmcga2V5" not in r.stderr
    r = modelmake(clone, "build", "cache=azure", f"cache.url={azure_cache['url']}", "cache.required=true",
                  "lora.r=3", "--", "--cores", "2", "--until", "finetune", env=env)
    assert r.returncode != 0 and "cache.required=true" in r.stderr and "d3Jvbmcga2V5" not in r.stderr


def test_a_server_gone_mid_download_leaves_nothing_and_the_next_build_completes(azure_cache, tmp_path):
    """The server stops during the first pull (export's graph, the largest entry): that build makes
    what it could not pull (export and what it needs) and publishes nothing; the next build, server
    back, pulls the rest. Both on two cores, as the publisher: threads are in no key, and torch's CPU
    reductions round by thread count, so what was built here must equal the publisher's bytes."""
    server = azure_cache["server"]
    clone = fresh_clone(tmp_path)
    env = az_env(server)
    ov = ("cache=azure", f"cache.url={azure_cache['url']}")
    from helpers.faults import start, wait_for

    build = start(clone, ["modelmake", "build", "--until", "export", *ov, "--", "--cores", "2"], tmp_path / "b.log",
                  env=env)
    try:  # a progress signal: the first pull has begun
        wait_for(lambda: (clone / "logs").exists() and any("pull " in p.read_text(errors="replace")
                                                           for p in (clone / "logs").rglob("*.log")),
                 300, "a pull to start", build, poll=0.01)
        server.stop(grace=0)
        rc = build.wait(600)
    finally:
        server.start()
    assert not [x for x in leftovers(clone) if x.name.startswith(".")]  # no temporary folder left
    r = modelmake(clone, "build", *ov, "--", "--cores", "2", env=env)
    assert r.returncode == 0, r.stderr[-3000:] + (tmp_path / "b.log").read_text()[-2000:]
    assert not leftovers(clone) and rc is not None
    theirs = nodes(azure_cache["first"])
    compared = [stage for stage, node in nodes(clone).items() if (clone / node.manifest).exists() and stage in SHARED]
    assert "export" in compared, compared
    for stage in compared:
        assert files_of(nodes(clone)[stage]) == files_of(theirs[stage]), stage


def test_a_server_gone_mid_upload_leaves_no_entry_a_reader_would_use(project, azurite_server, tmp_path):
    server = azurite_server
    publisher = copy_project(tmp_path / "pub", built=project)
    url = "az://gone/mid-upload"
    env = az_env(server)
    from helpers.faults import start, wait_for

    push = start(publisher, ["modelmake", "cache", "push", "cache=azure", f"cache.url={url}"], tmp_path / "p.log",
                 env=env)
    try:
        wait_for(lambda: "push " in (tmp_path / "p.log").read_text(errors="replace"), 300, "the push to start", push,
                 poll=0.005)
        server.stop(grace=0)
        push.wait(600)
    finally:
        server.start()
    clone = fresh_clone(tmp_path)  # up to export: base and quantize first, what the push began with
    r = modelmake(clone, "build", "--until", "export", "cache=azure", f"cache.url={url}", "--", "--cores", "2",
                  env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in actions(clone).get("pull", []):  # whatever was published whole, is whole
        assert files_of(nodes(clone)[stage]) == files_of(nodes(publisher)[stage])
    assert not leftovers(clone)


# --- the release, published and pulled --------------------------------------------------------
def test_the_smollm2_release_is_pulled_without_its_base(release, azurite_server, tmp_path):
    url, env = "az://release/smollm2", az_env(azurite_server)
    r = modelmake(release, "cache", "push", "experiment=smollm2", "cache=azure", f"cache.url={url}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    clone = fresh_clone(tmp_path)
    t0 = time.monotonic()
    r = modelmake(clone, "build", "experiment=smollm2", "cache=azure", f"cache.url={url}", "--", "--cores", "2",
                  env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    did = actions(clone)
    assert did.get("build") == ["register", "report"] and "base" not in did["pull"], did
    assert not (clone / "artifacts" / "base").exists()
    mine, theirs = nodes(clone, "experiment=smollm2"), nodes(release, "experiment=smollm2")
    for stage in did["pull"]:
        assert files_of(mine[stage]) == files_of(theirs[stage]), stage
    print(f"the SmolLM2 release pulled in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert os.environ.get("MODELMAKE_CACHE") is None  # the tests' own environment stays clean


# --- data read from the same storage ----------------------------------------------------------
def test_data_from_blob_storage_is_keyed_by_content_and_refused_by_line(project, azurite_server, tmp_path):
    p = copy_project(tmp_path / "p", built=project)
    container = azurite_server.client().create_container("data")
    records = (REPO / "data" / "travel_sample.jsonl").read_bytes()
    container.upload_blob("travel.jsonl", records)
    env = az_env(azurite_server)
    r = run(p, sys.executable, "-c", "from modelmake.recipe import build_plan; "
            "print(build_plan(overrides=['data.path=az://data/travel.jsonl']).finals[0]['dataset'].key)", env=env)
    assert r.returncode == 0 and r.stdout.strip() == nodes(p)["dataset"].key, r.stderr[-2000:]  # content, not URL
    extra = json.dumps({"prompt": "Is Oslo expensive?", "response": "Yes; plan a budget."}).encode() + b"\n"
    container.upload_blob("more.jsonl", records + extra)
    r = modelmake(p, "stage", "dataset", "data.path=az://data/more.jsonl", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    new = [d for d in (p / "artifacts" / "dataset").iterdir() if d.name != nodes(p)["dataset"].key]
    rendered = "".join((d / f).read_text() for d in new for f in ("train.jsonl", "eval.jsonl"))
    assert "Is Oslo expensive?" in rendered  # the blob's bytes, read from their local copy
    container.upload_blob("broken.jsonl", records + b'{"prompt": "q"}\n')
    r = modelmake(p, "plan", "data.path=az://data/broken.jsonl", env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("az://data/broken.jsonl:193: field 'response' is missing"), lines
    r = modelmake(p, "plan", "data.path=az://data/absent.jsonl", env=env)
    assert r.returncode == 2 and "data file not found: az://data/absent.jsonl" in r.stderr
