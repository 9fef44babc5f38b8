"""The register stage: the ONNX model folder and its adapter as a versioned model asset.

Backends (config group `register`):
- `local` (default): MLflow's model registry on a SQLite database under the project
  (versions, tags, aliases; `mlflow ui --backend-store-uri sqlite:///registry/mlflow.db`).
- `azureml`: an azure-ai-ml `Model` (custom model type) via `MLClient.models.create_or_update`,
  workspace from config or environment, credentials only through `DefaultAzureCredential`;
  the `model.yml` that `az ml model create -f` takes is written too.

Either way: the same content registered twice gives the same version (matched by a content
hash tag), changed content gives the next version, and a name or version that holds other
content is reported, never overwritten. The receipt (`receipt.json`) is the file target.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import file_hashes, verify

DIGEST_TAG = "modelmake.content_sha256"
RECEIPT = "receipt.json"


# --- the asset ------------------------------------------------------------------------------
FICLONE = 0x40049409  # Linux ioctl: a copy-on-write clone (btrfs, xfs, ...)


def _clone_or_copy(src: Path, dst: Path) -> None:
    """An independent copy: a registered version must not share an inode with a build output (a
    hard link did: one flipped byte in export changed every version registered from it). A
    copy-on-write clone where the file system has them costs no space until one side changes."""
    import fcntl

    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        try:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(fi, fo, 1 << 20)


def stage_asset(model_dir: Path, adapter_file: Path | None, adapter_name: str, asset: Path) -> str:
    """Lay out `asset/model/...` and `asset/adapters/<name>.onnx_adapter` (none for a merged graph);
    return its content hash."""
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            _clone_or_copy(f, asset / "model" / f.relative_to(model_dir))
    if adapter_file is not None:
        _clone_or_copy(adapter_file, asset / "adapters" / f"{adapter_name}.onnx_adapter")
    return hashlib.sha256(json.dumps(file_hashes(asset), sort_keys=True).encode()).hexdigest()


def lineage_tags(node) -> dict[str, str]:
    """Flat string tags: every upstream key, the data hashes, this build's code version."""
    tags: dict[str, str] = {}

    def walk(n):
        tags[f"modelmake.key.{n.stage}"] = n.key
        for path, digest in n.data.items():
            tags[f"modelmake.data.{Path(path).name}"] = digest
        for inp in n.inputs.values():
            walk(inp)

    walk(node)
    tags["modelmake.code"] = node.code["sha256"]
    return tags


# --- MLflow (local) -----------------------------------------------------------------------------
class MlflowRegistry:
    kind = "mlflow"

    def __init__(self, tracking_uri: str, artifact_root: str, experiment: str, alias: str | None = None,
                 receipts: list[dict] = ()):
        self.alias = alias
        self.receipts = list(receipts)  # what earlier builds registered here (their receipt.json)
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve().as_uri()
        self.experiment = experiment
        self.lock_path = self.db = None
        if tracking_uri.startswith("sqlite:///"):
            db = self.db = Path(tracking_uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            # one registration at a time: parallel sweep jobs otherwise race on the schema and names
            self.lock_path = db.with_name(db.name + ".lock")
        else:  # a server: fail fast rather than retry for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register(self, name, version, description, tags, asset: Path, digest: str) -> dict:
        from contextlib import nullcontext

        from filelock import FileLock
        from mlflow.exceptions import MlflowException

        try:
            with FileLock(self.lock_path, timeout=600) if self.lock_path else nullcontext():
                self._check_history(name)
                self._create_db()
                return self._register(name, version, description, tags, asset, digest)
        except ModelmakeError:
            raise
        except MlflowException as e:
            raise ModelmakeError(f"registry {self.tracking_uri}: {e.message.splitlines()[0]}") from None
        except Exception as e:  # the store's own errors (sqlalchemy, OS): one clear line, no receipt
            first = str(e).splitlines()[0] if str(e) else ""
            raise ModelmakeError(f"registry {self.tracking_uri}: {type(e).__name__}: {first}") from None

    def _check_history(self, name: str) -> None:
        """Refuse a registry that lost what receipts say it holds (its database deleted or replaced):
        a fresh one would number versions from 1 again, and two receipts would claim one version for
        different content. Called under the registry lock."""
        mine = [r for r in self.receipts if r.get("tracking_uri") == self.tracking_uri and r.get("name") == name]
        if not mine:
            return
        where = f"registry {self.db or self.tracking_uri}"
        if self.db is not None and not self.db.exists():
            raise ModelmakeError(f"{where}: the database is missing, but {len(mine)} receipt(s) in "
                                 f"artifacts/register/ name versions of '{name}' in it (e.g. version "
                                 f"{mine[0]['version']}); restore it, or remove those receipts, before registering")
        from mlflow.exceptions import MlflowException

        client = self._client()
        for r in mine:
            try:
                mv = client.get_model_version(name, r["version"])
            except MlflowException as e:  # absent; any other store error is its own one line (above)
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                mv = None
            if mv is None or (mv.tags or {}).get(DIGEST_TAG) != r.get("content_sha256"):
                raise ModelmakeError(f"{where}: lost version {r['version']} of '{name}' that a receipt names "
                                     f"(or it now holds other content); restore the registry, or remove that "
                                     f"receipt, before registering")

    def _create_db(self) -> None:
        """A new SQLite registry is created aside and renamed into place with every table: a kill -9
        during MLflow's table creation left a half-made database that refused every later
        registration ("table webhooks already exists"). Called under the registry lock."""
        if self.db is None or self.db.exists():
            return
        from mlflow.tracking import MlflowClient

        for stale in self.db.parent.glob(f".{self.db.name}.tmp-*"):  # a killed creation's
            stale.unlink()
        # a name of its own each time: MLflow keeps one store per URI in a process
        tmp = self.db.with_name(f".{self.db.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        uri = f"sqlite:///{tmp}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()  # creates the tables
        os.replace(tmp, self.db)

    def _register(self, name, version, description, tags, asset, digest) -> dict:
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            model = client.get_registered_model(name)
            if not any(k.startswith("modelmake.") for k in (model.tags or {})):
                raise ModelmakeError(f"registry {self.tracking_uri}: a model named '{name}' exists that "
                                     "modelmake did not register; refusing to add versions to it")
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name, tags={"modelmake.managed": "true"}, description=description)
        versions = client.search_model_versions(f"name='{name}'")
        for mv in versions:
            if (mv.tags or {}).get(DIGEST_TAG) == digest:
                return self._receipt(name, mv, created=False)
        if version is not None:
            taken = {int(mv.version) for mv in versions}
            expected = max(taken, default=0) + 1
            if int(version) in taken:
                raise ModelmakeError(f"registry {self.tracking_uri}: '{name}' version {version} exists with "
                                     "other content; not overwritten (leave register.version empty for the next)")
            if int(version) != expected:
                raise ModelmakeError(f"registry {self.tracking_uri}: MLflow numbers versions itself; "
                                     f"the next version of '{name}' is {expected}, not {version}")
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment, self.artifact_root)
        run = client.create_run(exp_id, tags=tags, run_name=f"register-{name}")
        client.log_artifacts(run.info.run_id, str(asset), "asset")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/asset", run_id=run.info.run_id,
                                         tags=tags | {DIGEST_TAG: digest}, description=description)
        if self.alias:  # a release moves its alias; a trial or a sweep point does not
            client.set_registered_model_alias(name, self.alias, mv.version)
        return self._receipt(name, mv, created=True)

    def _receipt(self, name, mv, created: bool) -> dict:
        return {"registry": self.kind, "tracking_uri": self.tracking_uri, "name": name,
                "version": str(mv.version), "uri": f"models:/{name}/{mv.version}", "source": mv.source,
                "created": created}


# --- Azure ML -------------------------------------------------------------------------------
def write_model_yml(model, yml_path: Path, relative_path: str) -> None:
    """`model.yml` for `az ml model create -f`, naming the asset relative to itself (azure-ai-ml's
    `dump` writes the path absolute, which would break in another clone after `dvc pull`)."""
    import yaml

    model.dump(yml_path)
    data = yaml.safe_load(Path(yml_path).read_text())
    data["path"] = relative_path
    Path(yml_path).write_text(yaml.safe_dump(data, sort_keys=False))


def azure_model(name, version, description, tags, path, properties=None):
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    return Model(name=name, version=version, type=AssetTypes.CUSTOM_MODEL, path=str(path),
                 description=description, tags=tags, properties=properties or {})


class AzureMLRegistry:
    kind = "azureml"
    ENV = {"subscription_id": "AZURE_SUBSCRIPTION_ID", "resource_group": "AZURE_RESOURCE_GROUP",
           "workspace_name": "AZUREML_WORKSPACE_NAME"}

    def __init__(self, cfg, client=None):
        self.workspace = {k: (cfg.get(k) or os.environ.get(env)) for k, env in self.ENV.items()}
        missing = [f"register.azureml.{k} (or ${env})" for k, env in self.ENV.items() if not self.workspace[k]]
        if missing and client is None:
            raise ModelmakeError("Azure ML workspace not configured: set " + ", ".join(missing))
        self.client = client

    def _ml_client(self):
        if self.client is None:
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            # credentials only from the environment / managed identity / az login, never config
            self.client = MLClient(DefaultAzureCredential(), **self.workspace)
        return self.client

    def register(self, name, version, description, tags, asset: Path, digest: str, yml_path: Path) -> dict:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        models = self._ml_client().models
        try:
            try:
                existing = list(models.list(name=name))
            except ResourceNotFoundError:
                existing = []
            for m in existing:
                if (m.tags or {}).get(DIGEST_TAG) == digest:
                    return self._receipt(m, created=False)
            taken = {str(m.version) for m in existing}
            if version is not None and str(version) in taken:
                raise ModelmakeError(f"Azure ML: '{name}' version {version} exists with other content; "
                                     "not overwritten (leave register.version empty for the next)")
            if version is None:
                numeric = [int(v) for v in taken if v.isdigit()]
                version = str(max(numeric, default=0) + 1)
            model = azure_model(name, str(version), description, tags | {DIGEST_TAG: digest}, asset)
            write_model_yml(model, yml_path, asset.name)
            created = models.create_or_update(model)
        except AzureError as e:
            raise ModelmakeError(f"Azure ML workspace {self.workspace.get('workspace_name')}: {e}") from None
        return self._receipt(created, created=True)

    def _receipt(self, m, created: bool) -> dict:
        return {"registry": self.kind, "workspace": self.workspace, "name": m.name, "version": str(m.version),
                "uri": f"azureml:{m.name}:{m.version}", "id": getattr(m, "id", None), "created": created}


# --- the stage ------------------------------------------------------------------------------
def describe(cfg) -> str:
    """The registered model's description, from what it is: model, data, LoRA and the export."""
    data = Path(cfg.data.path).name
    if cfg.export.get("merge"):
        return (f"{cfg.model.name} with a LoRA adapter (r={cfg.lora.r}) fine-tuned on {data}, merged into its "
                f"weights ({cfg.export.merge}): {cfg.export.precision} onnxruntime-genai graph "
                f"({cfg.export.execution_provider}), no adapter file")
    return (f"{cfg.model.name} with a LoRA adapter (r={cfg.lora.r}) fine-tuned on {data}: "
            f"{cfg.export.precision} onnxruntime-genai graph ({cfg.export.execution_provider}) + .onnx_adapter")


def receipts(register_dir: Path) -> list[dict]:
    """The receipts of every registration built in this artifacts folder."""
    out = []
    for path in sorted(Path(register_dir).glob(f"*/{RECEIPT}")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"modelmake: warning: {path}: unreadable receipt ({e}); the registry's history is checked "
                  "without it", file=sys.stderr)
    return out


def build(node, out: Path, cfg, azure_client=None) -> dict:
    from modelmake.stages.merged_layout import deployed

    r = cfg.register
    for artifact in node.inputs.values():
        verify(artifact.path)  # the manifest must match the files it describes
    model_dir, adapter_file = deployed(node.inputs, cfg.export.merge)  # export=int4_merged: the merged graph alone
    digest = stage_asset(model_dir, adapter_file, r.adapter_name, out / "asset")
    tags = {str(k): str(v) for k, v in (r.tags or {}).items()} | lineage_tags(node)
    description = r.description or describe(cfg)
    if r.backend == "local":
        registry = MlflowRegistry(r.local.tracking_uri, r.local.artifact_root, r.local.experiment, r.alias,
                                  receipts(node.path.parent))
        receipt = registry.register(r.name, r.version, description, tags, out / "asset", digest)
    elif r.backend == "azureml":
        registry = AzureMLRegistry(r.azureml, client=azure_client)
        receipt = registry.register(r.name, r.version, description, tags, out / "asset", digest,
                                    out / "model.yml")
    else:
        raise ModelmakeError(f"register.backend: must be 'local' or 'azureml', got {r.backend!r}")
    receipt |= {"content_sha256": digest, "adapter_name": r.adapter_name if adapter_file else None}
    (out / RECEIPT).write_text(json.dumps(receipt, indent=2, default=str))
    return {k: receipt[k] for k in ("registry", "name", "version", "uri", "created")}
