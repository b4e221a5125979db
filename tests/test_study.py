"""`pipeline.study` (issue 14): statistics against hand-computed cases, the fixed-weight
measurements against identities of the model, and the quick study end to end (structure only,
on a generated corpus, so it needs no shared data)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from lrt import LRT, LRTConfig, StrategyConfig
from lrt.strategies import forward_train
from pipeline.study import study
from pipeline.study.arms import Arm, check_arm
from pipeline.study.measure import gradient_cosine, param_group, state_gap
from pipeline.study.stats import paired_difference, summary

T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (table value)


# ---------------------------------------------------------------------------------------------
# Statistics


def test_paired_difference_matches_hand_computed_t_interval():
    # diffs 1, 2, 3: mean 2, sample std 1, half-width t(0.975, 2) * 1 / sqrt(3)
    d = paired_difference({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    half = T_975_DF2 / math.sqrt(3)
    assert d["mean"] == pytest.approx(2.0)
    assert d["std"] == pytest.approx(1.0)
    assert (d["lo"], d["hi"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert d["verdict"] == "no detectable difference"  # the interval contains 0


def test_paired_difference_verdicts_and_pairing_by_seed():
    base = {0: 1.00, 1: 1.10, 2: 0.90}
    better = {0: 0.95, 1: 1.04, 2: 0.86}  # every seed lower by 0.04-0.06: the pairing matters
    assert paired_difference(better, base)["verdict"] == "better"
    assert paired_difference(better, base, lower_is_better=False)["verdict"] == "worse"
    # unpaired, the spread across seeds (0.1) would swamp a 0.05 difference; paired it does not
    assert summary(list(base.values()))["std"] > 0.09
    partial = paired_difference({1: 1.0, 2: 2.0}, base)
    assert partial["seeds"] == [1, 2] and partial["n"] == 2
    assert partial["mean"] == pytest.approx(((1.0 - 1.1) + (2.0 - 0.9)) / 2)
    one = paired_difference({0: 1.0}, base)
    assert one["n"] == 1 and math.isnan(one["lo"]) and one["verdict"] == "no detectable difference"


# ---------------------------------------------------------------------------------------------
# Measurements at fixed weights


def _model(pathway: str = "shared", t: int = 8) -> LRT:
    torch.manual_seed(0)
    m = LRT(LRTConfig(vocab_size=64, depth=2, seq_len=t, n_embd=32, n_head=1, pathway=pathway))
    m.init_weights()
    with torch.no_grad():  # leave the zero init so the memory actually changes the states
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_state_gap_is_zero_exactly_where_the_strategy_is_exact():
    m = _model()
    x = torch.randint(0, 64, (3, 8))
    exact = state_gap(m, x, StrategyConfig("interleaved", subsets=8))  # S = T: exact
    assert max(exact["rel_l2"]) < 1e-5 and min(exact["cos"]) > 1 - 1e-6
    approx = state_gap(m, x, StrategyConfig("interleaved", subsets=2))
    assert approx["rel_l2"][0] < 1e-6  # position 0 has memory 0 either way
    assert approx["rel_l2_mean"] > 1e-4
    assert len(approx["rel_l2"]) == 8


def test_gradient_cosine_matches_separate_backward_passes():
    m = _model()
    x = torch.randint(0, 64, (2, 8))
    y = torch.randint(0, 64, (2, 8))
    same = gradient_cosine(m, x, y, StrategyConfig("chunked", chunk_size=1))  # == sequential
    assert same["all"]["cos"] == pytest.approx(1.0, abs=1e-6)
    assert same["all"]["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
    st = StrategyConfig("interleaved", subsets=2)
    got = gradient_cosine(m, x, y, st)

    def flat_grad(strategy, group):
        m.zero_grad(set_to_none=True)
        forward_train(m, x, y, strategy).loss.backward()
        return torch.cat([p.grad.flatten().double() for n, p in m.named_parameters()
                          if param_group(n) == group and p.grad is not None])  # fmt: skip

    for group in ("blocks", "pathway", "lm_head"):
        a, b = flat_grad(st, group), flat_grad(StrategyConfig("sequential"), group)
        ref = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        assert got[group]["cos"] == pytest.approx(ref, abs=1e-6)
        assert got[group]["norm_ratio"] == pytest.approx((a.norm() / b.norm()).item(), rel=1e-5)
    assert got["pathway"]["cos"] < 1 - 1e-4  # interleaved S=2 is not exact BPTT here


def test_arm_needing_a_missing_field_is_reported_not_dropped():
    base = {"vocab_size": 64, "depth": 1, "seq_len": 8, "n_embd": 32, "n_head": 1}
    assert check_arm(Arm("b", "b", {"pathway": "none"}), base) is None
    why = check_arm(Arm("future", "f", {"pathway": "none", "no_such_field": True}), base)
    assert why is not None and why.startswith("not available in this build")


# ---------------------------------------------------------------------------------------------
# Quick study end to end


def _corpus(tmp_path):
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "river", "stone"]
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    for i in range(6):
        lines = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(400)]
        (text_dir / f"book{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    core = tmp_path / "core"
    core.mkdir()
    items = [{"context": f"the {w} sat on the", "continuation": "mat"} for w in words[:4]]
    (core / "lambada_openai_small.jsonl").write_text(
        "\n".join(json.dumps(it) for it in items), encoding="utf-8"
    )
    return text_dir, core


def test_quick_study_outputs_resume_and_mlflow(tmp_path):
    text_dir, core = _corpus(tmp_path)
    out = tmp_path / "study"
    (tmp_path / "params.yaml").write_text(
        f"tracking:\n  uri: sqlite:///{tmp_path}/mlruns.db\n"
        f"  artifact_location: {tmp_path}/mlartifacts\n",
        encoding="utf-8",
    )
    args = ["all", "--quick", "--data", str(text_dir), "--core", str(core), "--out", str(out),
            "--config", str(tmp_path / "params.yaml")]  # fmt: skip
    res = CliRunner().invoke(study, args)
    assert res.exit_code == 0, res.output
    for kind, n_arms in (("equivalence", 8), ("attribution", 6)):
        folder = out / f"{kind}-quick"
        result = json.loads((folder / "results.json").read_text())
        assert result["study"] == kind and result["seeds"] == [0, 1] and not result["partial"]
        arms = {a["name"]: a for a in result["arms"]}
        assert len(arms) == n_arms and "baseline" in arms
        for name, a in arms.items():
            if not a["available"]:
                assert a["reason"].startswith("not available")
                continue
            assert a["seeds"] == [0, 1]
            assert set(a["metrics"]["val_bpb"]["per_seed"]) == {"0", "1"}
            assert a["metrics"]["core"]["n"] == 2  # CORE ran on the generated task
            if name != "baseline":
                d = a["vs_baseline"]["val_bpb"]
                assert d["n"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
            model = a["arm"]["model"]
            if model.get("pathway", "none") != "none" and not model.get("zero_memory"):
                probes = a["diagnostics"]
                assert "interleaved_s2" in probes and len(probes["interleaved_s2"]) == 3
                assert "all" in probes["interleaved_s2"][-1]["grad_cos"]
        for c in result["comparisons"]:
            assert "unavailable" in c or c["val_bpb"]["n"] == 2
        md = (folder / f"{kind}.md").read_text()
        assert "95%" in md and "| baseline |" in md
        assert (folder / f"{kind}.html").is_file() and (folder / "figures" / "bpb.png").is_file()
    eq = json.loads((out / "equivalence-quick" / "results.json").read_text())
    seq = next(a for a in eq["arms"] if a["name"] == "sequential")
    assert seq["metrics"]["train_test_gap"]["mean"] == 0.0  # exact training: no gap
    assert (
        "Every parallel strategy at the exact-trained weights"
        in (out / "equivalence-quick" / "equivalence.md").read_text()
    )

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, max_results=1000, order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    for kind, n_cells in (("equivalence", 8 * 2), ("attribution", 6 * 2)):
        # the final round's parent (latest start); the tracker may append what changed
        last = [r for r in parents if r.info.run_name.startswith(f"lrt-pipeline study {kind}")]
        last = last[-1].info.run_id
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == last]
        assert len(kids) == n_cells + 1  # every cell of the study + one summary child
        assert all("val_bpb" in r.data.metrics for r in kids if "summary" not in r.info.run_name)

    # resume, with fewer seeds: nothing is trained again (the seed count is not in a cell's key)
    res2 = CliRunner().invoke(study, [*args[:-2], "--no-tracking", "--seeds", "1"])
    assert res2.exit_code == 0, res2.output
    assert " steps" not in res2.output and "cached" in res2.output
    eq2 = json.loads((out / "equivalence-quick" / "results.json").read_text())
    assert eq2["seeds"] == [0]
    for a, a2 in zip(eq["arms"], eq2["arms"], strict=True):
        assert a2["metrics"]["val_bpb"]["per_seed"] == {
            "0": a["metrics"]["val_bpb"]["per_seed"]["0"]
        }


def test_missing_data_folder_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(study, ["equivalence", "--quick", "--data", str(tmp_path / "nope"),
                                     "--no-tracking", "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 1
    assert "no .txt files" in res.output and "--data" in res.output
