"""dvc.yaml against the code: every dependency path exists, and each stage lists every
pipeline/lrt module that `python -m stages.<stage>` imports (tests/dvc_graph.py walks the
imports, deferred ones included, function by function)."""

from __future__ import annotations

import pytest
import yaml

from tests import dvc_graph
from tests.dvc_graph import REPO, STAGE_ENTRY, missing, stage_deps, stage_modules

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_has_an_entry_point() -> None:
    assert set(DVC["stages"]) == set(STAGE_ENTRY)
    for stage in STAGE_ENTRY:
        cmd = DVC["stages"][stage].get("do", DVC["stages"][stage])["cmd"]
        assert cmd.startswith(f"python -m stages.{stage}"), (stage, cmd)
        assert f"stages/{stage}.py" in stage_deps(stage, DVC)


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_every_dependency_exists(stage: str) -> None:
    for dep in stage_deps(stage, DVC):
        if dep.startswith(("data/", "runs")) or "${key}" in dep:
            continue  # outputs of earlier stages
        assert (REPO / dep).exists(), f"dvc.yaml stage {stage}: dependency {dep} does not exist"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_each_stage_lists_the_modules_it_imports(stage: str) -> None:
    gaps = missing(stage)
    assert not gaps, f"dvc.yaml stage {stage} imports but does not list: {', '.join(gaps)}"


def test_the_walk_follows_deferred_imports_function_by_function() -> None:
    """Hand-checked facts of the code: download reaches the shard fetcher only through
    sources.download's deferred `from pipeline.data import datasets`; train reaches training
    through steps.train's deferred import but not the report (steps.report's); the report stage
    does not reach training."""
    download = stage_modules("download")
    assert {
        "pipeline.data.sources",
        "pipeline.data.datasets.fetcher",
        "pipeline.atomic",
    } <= download
    train = stage_modules("train")
    assert "pipeline.train.loop" in train and "pipeline.report.build" not in train
    assert "pipeline.data.datasets" not in train  # sources' download() is not run by train
    report = stage_modules("report")
    assert {"pipeline.report.build", "pipeline.report.data", "pipeline.report.plots"} <= report
    assert "pipeline.train.loop" not in report
    assert "pipeline.evaluation.core_tasks" in stage_modules("eval_bundle")
    # training's periodic BPB imports pipeline.evaluation.periodic; the package's lazy init
    # keeps the eval stage's modules (run, CORE, the bundle) out of train's dependencies
    assert "pipeline.evaluation.periodic" in train and "pipeline.evaluation.run" not in train
    assert dvc_graph.covered("pipeline/evaluation/core.py", ["pipeline/evaluation"])
    assert not dvc_graph.covered("pipeline/evaluation_x.py", ["pipeline/evaluation"])
