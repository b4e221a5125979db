"""End to end: `dvc repro` of the whole pipeline on a copy of the project with a tiny preset.

Checks every stage's outputs, finite metrics, CORE from an eval bundle downloaded from a local
HTTP server (tests/bundle_fixture.py), what `dvc metrics/plots/exp show` print, the MLflow
parent/child runs, and that a second `dvc repro` runs nothing. Takes a few minutes on two CPU
cores (most of it process start-up).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from bundle_fixture import BundleServer, make_bundle

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

# The docs/EVALUATION.md recipe for `dvc exp show` at 120 columns: with --only-changed, drop the
# dependency columns and the per-variant metrics; the report's headline.json (exact-decoding BPB
# per variant, the LRT's deltas vs baseline) and the params that changed remain.
EXP_SHOW_DROP = (
    r"Created|runs|data/|pipeline/|stages/|rust_loader/|lrt$|lrt/|Cargo|bpb|core|icl_|val_|step$"
)

# Small enough for two CPU cores; large enough that every code path runs.
TINY = {
    "data": {"max_bytes": 150_000},
    "tokenizer": {"vocab_size": 300, "train_max_bytes": 60_000, "val_fraction": 0.1},
    "model": {"depth": 2, "n_embd": 64, "n_head": 2, "seq_len": 64},
    "train": {
        "total_batch_tokens": 256,
        "device_batch_size": 4,
        "max_steps": 6,
        # params.yaml's baseline_2x (the LRT's effective compute) at twice this test's budget
        "variants": {"baseline_2x": {"train": {"max_steps": 12}}},
        "log_every": 2,
        "eval_every": 3,
        "eval_tokens": 512,
        "device": "cpu",
    },
    "eval": {
        "bpb_max_tokens": 1024,
        "sequential_max_tokens": 128,
        "core_dir": "data/eval_bundle",  # the eval_bundle stage's output
        "core_max_items": 2,
        "icl_max_items": 2,
        "samples_prompts": ["def "],
        "max_new_tokens": 4,
    },
}
STAGE_RUNS = {
    "download",
    "tokenize",
    "train/baseline",
    "train/lrt",
    "train/baseline_2x",
    "eval/baseline",
    "eval/lrt",
    "eval/baseline_2x",
    "report",
}
VARIANTS = {"baseline", "lrt", "baseline_2x"}
HEADLINE = {"step", "val_bpb", "val_loss", "bpb", "bpb_gap", "core", "icl_gain", "icl_acc"}


def _project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (work in progress), that exist."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [f for f in out if (REPO / f).is_file()]


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _dvc(
    project: Path, *args: str, env: dict[str, str], timeout: int = 900
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"dvc {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    extensions = sorted((REPO / "pipeline").glob("_rust*.so")) + sorted(
        (REPO / "pipeline").glob("_rust*.pyd")
    )
    if not extensions:
        pytest.skip("the Rust extension pipeline/_rust*.so is not built (pip install -e .)")
    if not (VENV_BIN / "dvc").exists():
        pytest.skip("dvc is not installed next to this Python")
    for module in (
        "pipeline.data.tokenizer",
        "pipeline.train.loop",
        "pipeline.evaluation.run",
        "pipeline.report.build",
    ):
        if not (REPO / (module.replace(".", "/") + ".py")).exists():
            pytest.skip(f"{module} is not there yet")

    root = tmp_path_factory.mktemp("e2e") / "project"
    for name in _project_files():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest)
    for ext in extensions:
        shutil.copy2(ext, root / "pipeline" / ext.name)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def bundle_url() -> Iterator[str]:
    server = BundleServer(make_bundle())
    yield f"{server.url}/eval_bundle.zip"
    server.close()


@pytest.fixture(scope="module")
def env(bundle_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRT_", "DVC_"))}
    env.update(
        LRT_EVAL_BUNDLE_URL=bundle_url,  # the eval_bundle stage's source (eval.bundle_url)
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.invalid",
    )
    env.pop("PYTHONPATH", None)
    return env


def test_dvc_repro_end_to_end(project: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", "init", "-q"], cwd=project, env=env, check=True)
    if not (project / ".dvc" / "config").exists():
        _dvc(project, "init", "-q", env=env)
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "e2e"], cwd=project, env=env, check=True)

    _dvc(project, "repro", env=env)

    # Every stage's outputs.
    raw = json.loads((project / "data/raw/manifest.json").read_text())
    assert raw["documents"] > 0
    stats = json.loads((project / "data/tokens/stats.json").read_text())
    assert stats["vocab_size"] == 300 and stats["train_tokens"] > 0 and stats["val_tokens"] > 0
    for variant in ("baseline", "lrt"):
        run = project / "runs" / variant
        for name in (
            "model.pt",
            "train_log.csv",
            "val_log.csv",
            "train_metrics.json",
            "metrics.json",
        ):
            assert (run / name).is_file(), f"{run / name} missing"
        metrics = json.loads((run / "metrics.json").read_text())
        assert math.isfinite(metrics["val_bpb"]) and 0 < metrics["val_bpb"] < 20, metrics
        assert set(metrics) <= HEADLINE, set(metrics) - HEADLINE  # detail is in eval_details
        assert math.isfinite(metrics["icl_gain"]["sequential"])  # was null before
        # CORE from the bundle the eval_bundle stage fetched from the local server
        assert math.isfinite(metrics["core"]["init"]), metrics
        details = json.loads((run / "eval_details.json").read_text())
        assert details["core_status"]["available"] and details["core_status"]["tasks"] == 2
        assert set(details["core_tasks"]["init"]) == {"tiny_mc", "tiny_lm"}
        train_metrics = json.loads((run / "train_metrics.json").read_text())
        assert train_metrics["step"] == 6
    bundle = json.loads((project / "data/eval_bundle/status.json").read_text())
    assert bundle["available"] and bundle["tasks"] == 2
    assert (project / "reports/report.md").is_file() and (project / "reports/report.html").is_file()
    report = (project / "reports/report.md").read_text()
    assert "CORE: 2 tasks from " in report and "eval_bundle" in report
    assert (project / "dvc.lock").is_file()

    # DVC sees the headline metrics only (the bucket detail made this 47 columns wide).
    shown = json.loads(_dvc(project, "metrics", "show", "--json", env=env).stdout)
    assert "runs/lrt/metrics.json" in json.dumps(shown)
    table = _dvc(project, "metrics", "show", env=env).stdout
    header = table.splitlines()[0].split()
    assert len(header) <= 24 and not any("bucket" in h for h in header), header

    # Plots: the overlays are PNG image plots; their HTML page loads no script (works offline).
    figures = [f"reports/figures/{n}.png" for n in ("val_bpb_vs_tokens", "val_bpb_vs_compute")]
    _dvc(project, "plots", "show", *figures, "-o", "plots_offline", env=env)
    page = (project / "plots_offline" / "index.html").read_text()
    assert "<img" in page and "<script" not in page
    # the vega-lite overlay: one spec over every variant's rows, from the repo's template
    specs = json.loads(_dvc(project, "plots", "show", "--json", env=env).stdout)["data"]
    vega = specs["val_bpb_vs_tokens"][0]
    values = vega["content"]["data"]["values"]
    assert {v["variant"] for v in values} == VARIANTS
    assert vega["content"]["encoding"]["color"]["field"] == "variant"

    # `dvc exp show` fits 120 columns with the recipe in docs/EVALUATION.md.
    recipe = ["exp", "show", "--no-pager", "--only-changed", "--drop", EXP_SHOW_DROP]
    shown = _dvc(project, *recipe, env={**env, "COLUMNS": "120"}).stdout
    width = max(len(line) for line in shown.splitlines())
    assert width <= 120 and "lrt.delta_equal_tokens" in shown and "…" not in shown, shown
    headline = json.loads((project / "reports/headline.json").read_text())
    assert set(headline) == VARIANTS and "delta_equal_tokens" in headline["lrt"]
    # the matched-compute row has a number: baseline_2x is within the compute tolerance
    assert math.isfinite(headline["lrt"]["delta_matched_compute"]), headline

    # MLflow: one parent for the invocation, one child per stage and variant.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("lrt")
    runs = client.search_runs([experiment.experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert set(children) == STAGE_RUNS | {"eval_bundle"}
    assert len(parents) == 1 and parents[0].info.run_name.startswith("dvc repro")
    # the UI opens on runs; eval runs group by pathway/strategy; the parent has the deltas
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert children["eval/lrt"].data.params["model.pathway"] == "shared"
    assert children["eval/baseline"].data.params["strategy.name"] == "none"
    parent = client.get_run(parents[0].info.run_id)
    assert "lrt/delta_equal_tokens" in parent.data.metrics, parent.data.metrics
    assert "variants.lrt" in parent.data.params
    logged = client.search_logged_models([experiment.experiment_id])
    assert {m.source_run_id for m in logged} == {
        children[f"eval/{v}"].info.run_id for v in VARIANTS
    }
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {
        parents[0].info.run_id
    }
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "val_bpb" in json.dumps(list(children["eval/lrt"].data.metrics))
    assert children["train/lrt"].data.params["model.pathway"] == "shared"
    assert client.get_metric_history(children["train/lrt"].info.run_id, "train/loss") or any(
        k.endswith("loss") for k in children["train/lrt"].data.metrics
    )

    def artifacts(name: str) -> set[str]:
        return {a.path for a in client.list_artifacts(children[name].info.run_id)}

    assert {"model.pt", "train_log.csv"} <= artifacts("train/lrt")
    assert "tokenizer.bpe" in artifacts("tokenize")

    # Nothing changed: nothing reruns.
    again = _dvc(project, "repro", env=env)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr, again.stdout
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)


def test_cli_run_end_to_end(project: Path, env: dict[str, str]) -> None:
    """`lrt-pipeline run` (no DVC): the same stages in one process, under one parent run."""
    out = project / "cli"
    overrides = {
        "data.raw_dir": out / "raw",
        "tokenizer.out_dir": out / "tokens",
        "train.out_dir": out / "runs",
        "report.out_dir": out / "reports",
        "tracking.experiment": "cli",
    }
    args = [str(VENV_BIN / "lrt-pipeline"), "run"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "report:" in result.stdout
    for variant in ("baseline", "lrt"):
        metrics = json.loads((out / "runs" / variant / "metrics.json").read_text())
        assert math.isfinite(metrics["val_bpb"])
    assert (out / "reports" / "report.html").is_file()

    # the trained LRT continues a prompt; the static decoder gives the same greedy tokens
    texts = []
    for extra in ([], ["--static"]):
        gen = [*args[:1], "generate", "--prompt", "The ", "--variant", "lrt", "--temperature",
               "0", "--max-new-tokens", "12", *extra, *args[2:]]  # fmt: skip
        result = subprocess.run(gen, cwd=project, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]
        texts.append(result.stdout)
    assert texts[0].startswith("The ") and len(texts[0]) > len("The \n")
    assert texts[0] == texts[1]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    # the name says what the command changed (its --set overrides)
    assert [p.info.run_name.split(" [")[0] for p in parents] == ["lrt-pipeline run"]
    assert "tracking.experiment=cli" in parents[0].info.run_name, parents[0].info.run_name
    assert f"train.out_dir={out / 'runs'}" in parents[0].data.tags["lrt.changes"]
    children = {
        r.info.run_name
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert children == STAGE_RUNS | {"eval_bundle"}  # run_all fetches the bundle too
