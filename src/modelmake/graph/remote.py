"""Data files read from storage: `data.path=az://container/path.jsonl` (and Azure ML's datastore
form, `azureml://datastores/<name>/paths/<path>`, resolved through azure-ai-ml where a workspace is
configured; not tested here). The blob is copied once, when the plan is built, to a local file named
by its sha256 (core.paths.remote_copy), so the dataset is keyed by the content, not the URL, and
the stage reads exactly the bytes the key names. Credentials as for the shared cache (graph.cache)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

from modelmake.core.errors import ModelmakeError
from modelmake.core.hashing import fact
from modelmake.core.paths import REMOTE_DIR, remote_copy
from modelmake.graph.cache import AzureStore, CacheError

SCHEMES = ("az://", "azure://", "azureml://")


def is_remote(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SCHEMES)


def _azureml_to_az(url: str, field: str) -> str:
    """azureml://datastores/<name>/paths/<path> -> az://<container>/<path>, the account set in the
    environment for the client (needs a workspace: AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP,
    AZUREML_WORKSPACE_NAME, and DefaultAzureCredential)."""
    m = re.fullmatch(r"azureml://datastores/([^/]+)/paths/(.+)", url)
    if not m:
        raise ModelmakeError(f"config field '{field}': {url!r} is not azureml://datastores/<name>/paths/<path>")
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        ws = {k: os.environ[v] for k, v in (("subscription_id", "AZURE_SUBSCRIPTION_ID"),
                                            ("resource_group_name", "AZURE_RESOURCE_GROUP"),
                                            ("workspace_name", "AZUREML_WORKSPACE_NAME"))}
        store = MLClient(DefaultAzureCredential(), **ws).datastores.get(m.group(1))
    except KeyError as e:
        raise ModelmakeError(f"config field '{field}': {url} needs an Azure ML workspace (${e.args[0]})") from None
    except Exception as e:  # noqa: BLE001 - the workspace's own refusal, in one line
        raise ModelmakeError(f"config field '{field}': {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    os.environ.setdefault("AZURE_STORAGE_ACCOUNT", store.account_name)
    return f"az://{store.container_name}/{m.group(2)}"


def fetch(url: str, field: str = "data.path") -> tuple[str, object]:
    """(sha256, local copy) of the blob at `url`: its properties are asked each time (one request),
    the bytes downloaded only when this content is not here yet."""
    az = _azureml_to_az(url, field) if url.startswith("azureml://") else url
    container, _, name = az.split("://", 1)[1].partition("/")
    if not name:
        raise ModelmakeError(f"config field '{field}': {url!r} names a container, not a file in it")
    st = AzureStore(f"az://{container}")
    blob = st.container().get_blob_client(name)
    try:
        props = st._call(f"reading {url}", blob.get_blob_properties)
    except CacheError as e:
        missing = "BlobNotFound" in str(e) or "ResourceNotFound" in str(e)
        raise ModelmakeError(f"config field '{field}': {'data file not found: ' + url if missing else e}") from None

    def download() -> str:
        REMOTE_DIR.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=REMOTE_DIR, prefix=".fetch-")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in st._call(f"reading {url}", lambda: blob.download_blob().chunks()):
                    h.update(chunk)
                    f.write(chunk)
            os.replace(tmp, remote_copy(h.hexdigest()))
        except CacheError as e:
            raise ModelmakeError(f"config field '{field}': {e}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return h.hexdigest()

    identity = f"{az}|{props.etag}|{props.size}"
    sha = fact(hashlib.sha256(identity.encode()).hexdigest(), "remote-sha256", download)
    if not remote_copy(sha).is_file():  # the memo outlived the copy: fetch the bytes again
        sha = download()
    return sha, remote_copy(sha)
