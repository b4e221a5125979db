"""MLflow tracking against a real SQLite store in a temporary folder, read back with MlflowClient."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline import invocation, tracking
from pipeline.config.settings import TrackingSettings
from pipeline.tracking import PARENT_ENV, Tracker, flatten_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module: creating its tables takes seconds."""
    return tmp_path_factory.mktemp("mlflow")


def _settings(store: Path, experiment: str, **kw: object) -> TrackingSettings:
    return TrackingSettings(
        uri=f"sqlite:///{store / 'mlruns.db'}",
        artifact_location=str(store / "artifacts"),
        experiment=experiment,
        **kw,
    )


def _runs(tracker: Tracker) -> dict[str, object]:
    runs = tracker.client.search_runs([tracker.experiment_id])
    return {run.info.run_name: run for run in runs}


@pytest.fixture(autouse=True)
def _no_parent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)


def test_disabled_tracking_is_a_no_op(tmp_path: Path) -> None:
    tracker = Tracker(_settings(tmp_path, "off", enabled=False))
    with tracker.pipeline("x") as parent, tracker.stage("train", variant="lrt") as run:
        assert parent is None and run is None
        tracking.log_metrics({"loss": 1.0}, step=1)  # no active run: nothing happens
    assert not (tmp_path / "mlruns.db").exists()


def test_parent_and_child_runs_with_params_metrics_artifacts(store: Path, tmp_path: Path) -> None:
    tracker = Tracker(_settings(store, "nested"), project_dir=REPO, system_metrics=False)
    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"bpb": 1.0}')
    with tracker.pipeline("lrt-pipeline run") as parent:
        assert os.environ[PARENT_ENV] == parent
        with tracker.stage("tokenize", params={"tokenizer": {"vocab_size": 2048}}):
            tracking.log_metrics({"tokenizer": {"bytes_per_token": 3.5}, "name": "skip me"})
        with tracker.stage("train", variant="lrt", params={"model.depth": 2}) as child:
            assert tracking.active_run_id() == child
            for step in range(3):
                tracking.log_metrics({"train/loss": 3.0 - step}, step=step)
            tracking.log_metrics({"val": {"bpb": 1.25, "nan": float("nan")}})
            tracking.log_artifact(artifact)
            tracking.set_tags({"extra": 1})
    assert PARENT_ENV not in os.environ
    assert tracking.active_run_id() is None

    runs = _runs(tracker)
    assert set(runs) == {"lrt-pipeline run", "tokenize", "train/lrt"}
    top = runs["lrt-pipeline run"]
    assert top.info.run_id == parent and top.info.status == "FINISHED"
    train = runs["train/lrt"]
    assert train.data.tags["mlflow.parentRunId"] == parent
    assert train.data.tags["lrt.stage"] == "train" and train.data.tags["lrt.variant"] == "lrt"
    assert train.data.tags["extra"] == "1"
    assert train.data.params["model.depth"] == "2"
    assert train.data.metrics["val/bpb"] == 1.25 and "val/nan" not in train.data.metrics
    assert train.info.status == "FINISHED"
    history = tracker.client.get_metric_history(train.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert [a.path for a in tracker.client.list_artifacts(train.info.run_id)] == ["metrics.json"]
    assert runs["tokenize"].data.params["tokenizer.vocab_size"] == "2048"
    assert runs["tokenize"].data.metrics["tokenizer/bytes_per_token"] == 3.5


def test_failed_stage_is_marked_failed(store: Path) -> None:
    tracker = Tracker(_settings(store, "failing"), system_metrics=False)
    with pytest.raises(RuntimeError), tracker.stage("eval", variant="baseline"):
        raise RuntimeError("boom")
    runs = _runs(tracker)
    assert runs["eval/baseline"].info.status == "FAILED"
    assert tracking.active_run_id() is None


def test_parent_from_environment_is_joined(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker(_settings(store, "env-parent"), system_metrics=False)
    parent = tracker.client.create_run(tracker.experiment_id, run_name="outer").info.run_id
    monkeypatch.setenv(PARENT_ENV, parent)
    with tracker.stage("report"):
        pass
    assert _runs(tracker)["report"].data.tags["mlflow.parentRunId"] == parent


def test_stages_of_one_dvc_invocation_share_a_parent(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stages of one `dvc repro` are separate processes under one dvc process; each finds the
    parent the first created. (Fresh Tracker objects stand in for the stage processes.)"""
    monkeypatch.setattr(invocation, "_ancestors", lambda: iter([4242]))
    monkeypatch.setattr(
        invocation, "_cmdline", lambda pid: ["/venv/bin/python", "/venv/bin/dvc", "repro"]
    )
    monkeypatch.setattr(invocation, "_start_time", lambda pid: "777")
    settings = _settings(store, "dvc-like")
    for name in ("download", "tokenize"):
        monkeypatch.setenv("DVC_STAGE", name)
        with Tracker(settings, system_metrics=False).stage(name):
            pass
    runs = _runs(Tracker(settings))
    parents = {runs[name].data.tags["mlflow.parentRunId"] for name in ("download", "tokenize")}
    assert len(parents) == 1
    (parent,) = parents
    top = next(run for run in runs.values() if run.info.run_id == parent)
    assert top.info.run_name.startswith("dvc repro")
    assert top.data.tags["lrt.invocation"] == "dvc:4242:777"
    assert top.info.status == "FINISHED"
    # Another dvc process gets its own parent.
    monkeypatch.setattr(invocation, "_start_time", lambda pid: "778")
    with Tracker(settings, system_metrics=False).stage("report"):
        pass
    assert _runs(Tracker(settings))["report"].data.tags["mlflow.parentRunId"] != parent


def test_process_tree_helpers_read_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this platform")
    assert invocation._ppid(os.getpid()) == os.getppid()
    assert invocation._cmdline(os.getpid())[0].endswith(("python", Path(sys.executable).name))
    assert invocation._dvc_arg(["/v/bin/python", "/v/bin/dvc", "repro"]) == 1
    assert invocation._dvc_arg(["python", "-m", "dvc", "exp", "run"]) == 2
    assert invocation._dvc_arg(["dvc", "repro"]) == 0
    assert invocation._dvc_arg(["python", "stages/train.py", "lrt"]) is None


def test_flatten_metrics_keeps_finite_numbers_only() -> None:
    assert flatten_metrics(
        {"a": {"b": 1, "c": True, "d": "x"}, "e f": 2.5, "g(h)": float("inf")}
    ) == {
        "a/b": 1.0,
        "a/c": 1.0,
        "e f": 2.5,
    }


def test_interrupted_stage_is_marked_killed(store: Path) -> None:
    tracker = Tracker(_settings(store, "killed"), system_metrics=False)
    with pytest.raises(KeyboardInterrupt), tracker.stage("train", variant="lrt"):
        raise KeyboardInterrupt
    assert _runs(tracker)["train/lrt"].info.status == "KILLED"


def test_experiment_opens_on_runs(store: Path) -> None:
    """MLflow 3's UI shows the GenAI traces view unless the experiment says otherwise: the tag
    it reads is `mlflow.experimentKind`, "custom_model_development" being its "Machine learning"
    kind (runs table). An experiment made before this tag existed gets it on first use."""
    tracker = Tracker(_settings(store, "kind"), system_metrics=False)
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    old_id = tracker.client.create_experiment("made-by-hand")
    assert "mlflow.experimentKind" not in tracker.client.get_experiment(old_id).tags
    Tracker(_settings(store, "made-by-hand")).experiment_id  # noqa: B018 - property with effect
    assert tracker.client.get_experiment(old_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )


def test_log_to_parent(store: Path) -> None:
    tracker = Tracker(_settings(store, "to-parent"), system_metrics=False)
    assert tracking.log_to_parent({"x": 1.0}) is None  # no active run: no-op
    with tracker.pipeline("lrt-pipeline run") as parent:
        with tracker.stage("report"):
            got = tracking.log_to_parent(
                {"lrt": {"delta_matched_compute": -0.02}}, {"variants": {"lrt": "shared"}}
            )
        with tracker.stage("report"):  # a second report under the same parent, another value
            tracking.log_to_parent({"lrt": {"delta_matched_compute": -0.03}}, {"variants.lrt": "x"})
    assert got == parent
    top = tracker.client.get_run(parent)
    assert top.data.metrics["lrt/delta_matched_compute"] == -0.03  # latest value
    assert top.data.params == {"variants.lrt": "shared"}
    assert top.data.tags["param.variants.lrt"] == "x"


def test_describe_changes_and_parent_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    for key in [k for k in os.environ if k.startswith("LRT_")]:
        monkeypatch.delenv(key)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    (tmp_path / "params.yaml").write_text("train:\n  max_steps: 100\n  seed: 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "p"], cwd=tmp_path, check=True)
    assert invocation.describe_changes(tmp_path, []) == []
    (tmp_path / "params.yaml").write_text("train:\n  max_steps: 300\n  seed: 1\n")  # dvc exp -S
    monkeypatch.setenv("LRT_EVAL__CORE_MAX_ITEMS", "4")
    argv = ["lrt-pipeline", "run", "--set", "model.depth=4", "--set=strategy.subsets=3"]
    changes = invocation.describe_changes(tmp_path, argv)
    assert changes == [
        "train.max_steps=300",
        "model.depth=4",
        "strategy.subsets=3",
        "eval.core_max_items=4",
    ]
    assert tracking._parent_name("dvc repro", changes[:1]) == "dvc repro [train.max_steps=300]"
    assert tracking._parent_name("lrt-pipeline run", []) == "lrt-pipeline run"
    paths = tracking._parent_name("run", ["train.out_dir=/tmp/some/long/folder/runs", "a=b"])
    assert paths == "run [train.out_dir=…/runs, a=b]"
    long = tracking._parent_name("x", [f"k{i}=v" for i in range(100)])
    assert len(long) < 130 and long.endswith("…]")
