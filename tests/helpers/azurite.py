"""A real Azure Blob service for tests and benches: Azurite (Microsoft's storage emulator, Node.js)
on a free loopback port, its data in a folder of the test's own.

    from helpers.azurite import azurite, AzuriteUnavailable
    with azurite(tmp_path) as az:          # started, answering
        client = az.client()               # a BlobServiceClient (bounded timeouts, few retries)
        az.stop(); az.start()              # same port, same data folder
    # stopped: no process left listening on az.port

Where `azurite-blob` comes from (`azurite_bin`): $MODELMAKE_AZURITE, then the repository's own
`.cache/azurite` (what `install` writes, ignored by git), then PATH. `ensure()` installs it there
with npm when Node.js is present; without Node.js it answers None and why, and the caller skips.

The account is Azurite's well-known development account (`devstoreaccount1` and its published key):
test configuration only, never a secret. Everything listens on 127.0.0.1 only, and every wait is
bounded.

Quirks of Azurite 3.37 seen here (Node.js 20):
- telemetry is on by default; with it on, the first SIGTERM prints "successfully closed" and the node
  process stays ~20 s (flushing telemetry to a network it cannot reach). `--disableTelemetry`
  makes it exit in a fraction of a second; we pass it, and still follow up with SIGKILL after a
  grace (10 s: on a loaded machine 2 s killed it before it saved its metadata, and a restart lost
  the container) on the same process group, so no step after ours finds it still listening.
- an unauthenticated list answers 403, as the real service does: readiness is "any HTTP answer".
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "azurite"  # ignored by git (/.cache/)
# Pinned knowingly: azurite 3.36+ declares `engines: node >= 22` (npm warns EBADENGINE) yet runs on
# these machines' Node.js 20 (measured: 3.37.0 installs in ~1 min, 360 MB, serves the Blob API).
VERSION = "3.37.0"
HOST = "127.0.0.1"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite):
# the same on every machine, test configuration only.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
FLAGS = ("--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry")  # all accepted by 3.37.0


class AzuriteUnavailable(RuntimeError):
    """No azurite-blob here and none could be installed (no Node.js, no npm registry): skip."""


# --- finding and installing it ---------------------------------------------------------------

def azurite_bin() -> Path | None:
    """`azurite-blob`: $MODELMAKE_AZURITE, then <repo>/.cache/azurite, then PATH; None when absent."""
    env = os.environ.get("MODELMAKE_AZURITE")
    if env:
        return Path(env) if Path(env).is_file() else None
    local = CACHE / "node_modules" / ".bin" / "azurite-blob"
    if local.is_file():
        return local
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


def node_missing() -> str | None:
    """Why Node.js cannot run Azurite here (None when `node` and `npm` are on PATH)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"Node.js is absent ({', '.join(missing)} not on PATH): Azurite cannot run" if missing else None


def install(dest: Path = CACHE, timeout: float = 600) -> tuple[Path | None, str | None]:
    """`npm install --prefix dest azurite@VERSION`: (the installed azurite-blob, None), or (None,
    the reason) when Node.js is absent or npm fails (no registry, timeout)."""
    why = node_missing()
    if why:
        return None, why
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["npm", "install", "--prefix", str(dest), "--no-audit", "--no-fund", f"azurite@{VERSION}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(cmd)} took over {timeout:.0f} s"
    exe = dest / "node_modules" / ".bin" / "azurite-blob"
    if r.returncode != 0 or not exe.is_file():
        return None, f"{' '.join(cmd)} failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}"
    return exe, None


def ensure() -> tuple[Path | None, str | None]:
    """azurite-blob, installed into .cache/azurite first when Node.js is here but Azurite is not;
    (None, why) otherwise. A $MODELMAKE_AZURITE that names no file is a reason, not an install."""
    exe = azurite_bin()
    if exe is not None:
        return exe, None
    if os.environ.get("MODELMAKE_AZURITE"):
        return None, f"MODELMAKE_AZURITE={os.environ['MODELMAKE_AZURITE']} is not a file"
    return install()


# --- ports -----------------------------------------------------------------------------------

def connection_string(port: int) -> str:
    """The emulator's published development account on this host's `port`."""
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://{HOST}:{port}/{ACCOUNT};")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((HOST, port)) == 0


def answers(port: int, timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers a list of the account on 127.0.0.1:port (any status: an
    unauthenticated list is a 403)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", f"/{ACCOUNT}?comp=list")
        return conn.getresponse().status > 0
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# --- the server ------------------------------------------------------------------------------

class Azurite:
    """One azurite-blob on 127.0.0.1:port with its data in `location`; `stop()` and `start()` again
    keep both (a test can stop it mid-transfer and restart it on the same data)."""

    def __init__(self, exe: Path, location: Path, port: int | None = None, log: Path | None = None,
                 startup_timeout: float = 30.0, grace: float = 10.0):
        self.exe = Path(exe)
        self.location = Path(location)
        self.port = port or free_port()
        self.log = Path(log) if log else self.location.parent / "azurite.log"
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [str(self.exe), "--blobHost", HOST, "--blobPort", str(self.port),
                "--location", str(self.location), *FLAGS]

    def start(self) -> Azurite:
        """Start it (on the same port and data as before) and wait, bounded, until it answers."""
        if self.running:
            return self
        if listening(self.port):
            raise RuntimeError(f"port {self.port} on {HOST} is taken by another process")
        self.location.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # own process group
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"azurite-blob exited ({code}) while starting:\n{self.log_tail()}")
            if answers(self.port, timeout=1.0):
                return self
            time.sleep(0.1)
        self.stop(grace=0)
        raise RuntimeError(f"azurite-blob did not answer on {HOST}:{self.port} within "
                           f"{self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to its process group, at most `grace` seconds (0: SIGKILL at once), then SIGKILL
        to the same pid and group; returns once it is reaped and the port no longer accepts."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        grace = self.grace if grace is None else grace
        try:
            if proc.poll() is None and grace > 0:
                _signal(proc, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
        finally:
            _signal(proc, signal.SIGKILL)  # the group too: nothing it started survives
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while listening(self.port, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or listening(self.port, timeout=0.2):
            raise RuntimeError(f"azurite-blob (pid {proc.pid}) still alive or port {self.port} still listening")

    def client(self, **kwargs):
        """A BlobServiceClient on it, with bounded timeouts and few retries (a stopped server fails
        a request within seconds instead of retrying for minutes); `kwargs` override them."""
        from azure.storage.blob import BlobServiceClient

        options = {"connection_timeout": 5, "read_timeout": 30, "retry_total": 1, "retry_connect": 1,
                   "retry_read": 1, "retry_backoff_factor": 0.1} | kwargs
        return BlobServiceClient.from_connection_string(self.connection_string, **options)

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the process and its group (its own session: pgid == pid), if still there."""
    for send in (lambda: os.killpg(proc.pid, sig), lambda: proc.send_signal(sig)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send()


@contextlib.contextmanager
def azurite(tmp_dir: Path, port: int | None = None, startup_timeout: float = 30.0,
            grace: float = 10.0) -> Iterator[Azurite]:
    """A started Azurite with its data in tmp_dir/data (log: tmp_dir/azurite.log) on a free loopback
    port (or `port`); stopped on exit, exceptions included. Raises AzuriteUnavailable (with the
    reason) when no azurite-blob is here and none can be installed."""
    exe, why = ensure()
    if exe is None:
        raise AzuriteUnavailable(why)
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    server = Azurite(exe, tmp_dir / "data", port=port, log=tmp_dir / "azurite.log",
                     startup_timeout=startup_timeout, grace=grace)
    try:
        yield server.start()
    finally:
        server.stop()


if __name__ == "__main__":  # a quick look: python tests/helpers/azurite.py
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with azurite(Path(d)) as az:
            print(f"azurite {VERSION} at {az.url} (pid {az.proc.pid})")
            print("containers:", [c.name for c in az.client().list_containers()])
            t0 = time.perf_counter()
        print(f"stopped in {time.perf_counter() - t0:.2f} s; port {az.port} listening: {listening(az.port)}")
