"""MLflow tracking: one parent run per pipeline invocation, one child run per stage and variant.

MLflow only records; DVC decides what reruns. The store defaults to a SQLite file in the project
(`sqlite:///mlruns.db`, artifacts in `mlartifacts/`), so everything works offline and
`mlflow ui --backend-store-uri sqlite:///mlruns.db` shows it.

Which parent a stage's child run joins:
  1. `LRT_MLFLOW_PARENT_RUN_ID` in the environment (set by `lrt-pipeline run` and by callers that
     want to group stages themselves);
  2. under `dvc repro` / `dvc exp run`: the run tagged with this DVC process (its pid and start
     time), created by the first stage and reused by the next ones;
  3. otherwise a new parent named after the command.

Components running inside a stage log through the module-level helpers, which write to the
active child run and do nothing when there is none (tracking disabled, or a plain unit test):

    >>> from pipeline import tracking
    >>> tracking.log_metrics({"train/loss": 3.2}, step=10)   # no active run: a no-op

Which invocation a stage belongs to and what it changed (git, the DVC process, params.yaml)
come from `pipeline.invocation`; `describe_changes` is re-exported here.

Example (what `pipeline.steps` does):
    >>> with Tracker(settings.tracking).stage("train", variant="lrt", params=settings.flat()) as run:
    ...     tracking.log_metrics({"val/bpb": 1.1})
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.config.settings import TrackingSettings
from pipeline.invocation import current_invocation, describe_changes, flatten_params, git_commit

log = logging.getLogger(__name__)

PARENT_ENV = "LRT_MLFLOW_PARENT_RUN_ID"
TAG_INVOCATION = "lrt.invocation"
TAG_STAGE = "lrt.stage"
TAG_VARIANT = "lrt.variant"
TAG_COMMIT = "lrt.git_commit"
TAG_DVC_LOCK = "lrt.dvc_lock_sha256"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""What MLflow 3's UI reads to open an experiment on its Runs table ("Machine learning") rather
than the GenAI traces view; the UI's own values are in its `ExperimentKind` enum."""
TAG_CHANGES = "lrt.changes"

__all__ = [
    "PARENT_ENV",
    "Tracker",
    "active_run_id",
    "describe_changes",
    "flatten_metrics",
    "log_artifact",
    "log_metrics",
    "log_params",
    "log_to_parent",
    "set_tags",
]


# ---------------------------------------------------------------------------------------------
# Helpers for code running inside a stage
# ---------------------------------------------------------------------------------------------


def _mlflow() -> Any | None:
    """The mlflow module if a run may be active. Importing mlflow costs seconds, so code paths
    that never started tracking never import it."""
    return sys.modules.get("mlflow")


def active_run_id() -> str | None:
    """Id of the active MLflow run, or None."""
    mlflow = _mlflow()
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numeric values (nested dicts flattened with "/") to the active run; non-numbers and
    non-finite values are skipped. No-op without an active run."""
    if active_run_id() is None:
        return
    flat = flatten_metrics(metrics)
    if flat:
        _mlflow().log_metrics(flat, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters (nested dicts flattened with ".") to the active run; no-op without one."""
    if active_run_id() is None:
        return
    _mlflow().log_params(flatten_params(params))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file or folder into the active run's artifacts; no-op without a run or file."""
    path = Path(path)
    if active_run_id() is None or not path.exists():
        return
    mlflow = _mlflow()
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active run; no-op without one."""
    if active_run_id() is None:
        return
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


def log_to_parent(
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str | None:
    """Log to the parent of the active child run (the pipeline invocation): headline numbers and
    what the invocation compared. A param already logged with another value (a rerun under the
    same parent) becomes a tag instead of an error. Returns the parent id; None (no-op) without
    an active child run."""
    mlflow = _mlflow()
    run = mlflow.active_run() if mlflow is not None else None
    parent = run.data.tags.get(TAG_PARENT) if run is not None else None
    if parent is None:
        run_id = active_run_id()
        if run_id is None:
            return None
        parent = mlflow.MlflowClient().get_run(run_id).data.tags.get(TAG_PARENT)
        if parent is None:
            return None
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    from mlflow.entities import Metric, Param, RunTag

    flat = flatten_metrics(metrics or {})
    client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in flat.items()])
    existing = client.get_run(parent).data.params
    new_params, as_tags = {}, {}
    for key, value in flatten_params(params or {}).items():
        if key not in existing:
            new_params[key] = value
        elif existing[key] != value:
            as_tags[f"param.{key}"] = value
    if new_params:
        client.log_batch(parent, params=[Param(k, v) for k, v in new_params.items()])
    all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, **as_tags}
    if all_tags:
        client.log_batch(parent, tags=[RunTag(k, v[:5000]) for k, v in all_tags.items()])
    return parent


_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"bpb": {"init": 1.2}, "note": "x"} -> {"bpb/init": 1.2}: finite numbers only, keys made
    MLflow-safe. Booleans count as 0/1."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _METRIC_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[name] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
            number = float(value.item())
            if math.isfinite(number):
                out[name] = number
    return out


# ---------------------------------------------------------------------------------------------
# Tracker
# ---------------------------------------------------------------------------------------------


class Tracker:
    """Opens parent and child runs in the configured store. Every method is a no-op when
    `settings.enabled` is false.

    Args:
        settings: The `tracking` section (its uri and artifact_location already absolute when it
            came from `load_settings`).
        project_dir: Folder for the git commit and dvc.lock tags (default: cwd).
        system_metrics: Also record CPU/memory/GPU usage (needs psutil; None = when available).
    """

    def __init__(
        self,
        settings: TrackingSettings,
        *,
        project_dir: str | Path | None = None,
        system_metrics: bool | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
        if system_metrics is None:
            try:
                import psutil  # noqa: F401

                system_metrics = True
            except ImportError:
                system_metrics = False
        self.system_metrics = system_metrics
        self._client: Any = None
        self._experiment_id: str | None = None
        self._own_parent: str | None = None

    # -- store -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """An `MlflowClient` on the configured store (created on first use)."""
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            mlflow.set_tracking_uri(self.settings.uri)
            with self._store_lock():
                client = MlflowClient(tracking_uri=self.settings.uri)
                # The first call creates and migrates a sqlite store; two processes doing that
                # at once race in MLflow's migration ("duplicate column name"), so do it here,
                # under the lock, rather than on the first log call.
                client.search_experiments(max_results=1)
            self._client = client
        return self._client

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Exclusive lock beside a sqlite store (`mlruns.db.lock`) while it is created or its
        experiment is looked up/created; a no-op for other stores and where fcntl is absent."""
        uri = self.settings.uri
        if not uri.startswith("sqlite:///"):
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{db}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def experiment_id(self) -> str:
        """Id of the configured experiment, created with the configured artifact root if new."""
        if self._experiment_id is None:
            client = self.client
            with self._store_lock():  # two new processes must not both create the experiment
                experiment = client.get_experiment_by_name(self.settings.experiment)
                if experiment is not None:
                    self._experiment_id = experiment.experiment_id
                    if TAG_EXPERIMENT_KIND not in experiment.tags:  # made by an older version
                        client.set_experiment_tag(
                            self._experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND
                        )
                else:
                    location = Path(self.settings.artifact_location)
                    if not location.is_absolute():
                        location = self.project_dir / location
                    self._experiment_id = client.create_experiment(
                        self.settings.experiment,
                        artifact_location=location.resolve().as_uri(),
                        tags={
                            TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
                            "mlflow.note.content": (
                                "LRT pipeline runs: one parent per invocation (its name says "
                                "what changed), one child per stage and variant. Group by the "
                                "tag lrt.variant or the params model.pathway / strategy.name."
                            ),
                        },
                    )
        return self._experiment_id

    # -- parent ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pipeline(self, name: str) -> Iterator[str | None]:
        """Open a parent run for a multi-stage invocation (`lrt-pipeline run`), export its id in
        `LRT_MLFLOW_PARENT_RUN_ID` for the stages, and close it. Reuses an existing parent from
        the environment. Yields the parent run id (None when disabled)."""
        if not self.enabled:
            yield None
            return
        if os.environ.get(PARENT_ENV):
            yield os.environ[PARENT_ENV]
            return
        changes = describe_changes(self.project_dir)
        tags = {**self._base_tags(), TAG_CHANGES: ", ".join(changes) or "none"}
        run = self.client.create_run(
            self.experiment_id, run_name=_parent_name(name, changes), tags=tags
        )
        run_id = run.info.run_id
        os.environ[PARENT_ENV] = run_id
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        finally:
            os.environ.pop(PARENT_ENV, None)
            self.client.set_terminated(run_id, status)

    def parent_run_id(self, name: str) -> str:
        """The parent for a stage started now (see the module docstring for the rules)."""
        if os.environ.get(PARENT_ENV):
            return os.environ[PARENT_ENV]
        invocation, run_name = current_invocation(name)
        if invocation is not None:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_INVOCATION}` = '{invocation}'",
                max_results=1,
            )
            if found:
                return found[0].info.run_id
        changes = describe_changes(self.project_dir)
        tags = {**self._base_tags(), TAG_CHANGES: ", ".join(changes) or "none"}
        if invocation is not None:
            tags[TAG_INVOCATION] = invocation
        run = self.client.create_run(
            self.experiment_id, run_name=_parent_name(run_name, changes), tags=tags
        )
        self._own_parent = run.info.run_id
        return run.info.run_id

    # -- child -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(
        self,
        stage: str,
        *,
        variant: str | None = None,
        params: Mapping[str, Any] | None = None,
        command: str | None = None,
    ) -> Iterator[str | None]:
        """Run one stage (for one variant) as an active child run; yields its id (None when
        disabled). The module-level helpers log to it. On an exception the run is marked
        FAILED (KILLED for Ctrl-C / SystemExit) and the exception propagates."""
        if not self.enabled:
            yield None
            return
        import mlflow

        parent = self.parent_run_id(command or f"lrt-pipeline {stage}")
        tags = {**self._base_tags(), TAG_PARENT: parent, TAG_STAGE: stage}
        if variant is not None:
            tags[TAG_VARIANT] = variant
        name = stage if variant is None else f"{stage}/{variant}"
        child = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        status = "FAILED"
        self.client.update_run(parent, status="RUNNING")
        try:
            with mlflow.start_run(run_id=child.info.run_id, log_system_metrics=self.system_metrics):
                if params:
                    log_params(params)
                start = time.perf_counter()
                yield child.info.run_id
                mlflow.log_metric("stage_seconds", time.perf_counter() - start)
                status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (TrainingInterrupted)
            status = "KILLED"
            raise
        finally:
            if mlflow.active_run() is not None:  # an exception left it open
                mlflow.end_run(status)
            self.client.set_terminated(child.info.run_id, status)
            if parent != os.environ.get(PARENT_ENV):
                # A parent shared across DVC stage processes ends with each stage; the next one
                # sets it running again.
                self.client.set_terminated(parent, status)

    # -- tags --------------------------------------------------------------------------------

    def _base_tags(self) -> dict[str, str]:
        tags = {"mlflow.source.name": "lrt-pipeline"}
        commit = git_commit(self.project_dir)
        if commit:
            tags[TAG_COMMIT] = commit
            tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        lock = self.project_dir / "dvc.lock"
        if lock.exists():
            tags[TAG_DVC_LOCK] = hashlib.sha256(lock.read_bytes()).hexdigest()
        for env, tag in (("DVC_STAGE", "dvc.stage"), ("DVC_EXP_NAME", "dvc.exp_name")):
            if os.environ.get(env):
                tags[tag] = os.environ[env]
        return tags


def _parent_name(label: str, changes: list[str]) -> str:
    """`dvc repro <time> [train.max_steps=300]`: the invocation and what it changed."""
    if not changes:
        return label

    def short(change: str) -> str:  # key=/a/long/path -> key=…/path (the tag keeps it whole)
        key, sep, value = change.partition("=")
        if sep and "/" in value and len(value) > 24:
            value = "…/" + value.rstrip("/").rsplit("/", 1)[-1]
        return f"{key}{sep}{value}"

    text = ", ".join(short(c) for c in changes)
    return f"{label} [{text if len(text) <= 120 else text[:119] + '…'}]"
