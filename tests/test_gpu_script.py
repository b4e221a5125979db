"""The one-call GPU script (`bench/gpu.sh` -> `pipeline.benchmarks.gpu`) runs end to end.

A device is lent to some sessions only, for minutes; a script that broke since its last run
would waste them. This runs its `--smoke` mode (tiny sizes, CPU, the same code paths minus CUDA
graphs) over every section but `pytest` (nested) and `quality` (minutes on CPU), on shards
packed here, and checks that each section produced figures and no errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.packing import pack
from pipeline.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["env", "decode", "train_compiled", "train_eager", "loader"]


def _errors(node, path=""):
    if isinstance(node, dict):
        if "error" in node:
            yield path, node["error"]
        for k, v in node.items():
            yield from _errors(v, f"{path}/{k}")


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_section(tmp_path):
    docs = [
        f"document {i}: " + " ".join(f"word{j % 97}" for j in range(i, i + 400)) for i in range(60)
    ]
    tok = Tokenizer.train(docs, vocab_size=300)
    pack(docs, tok, tmp_path / "data" / "tokens", val_fraction=0.1, shard_tokens=4096)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.benchmarks.gpu", "--smoke", "--budget", "600",
         "--only", ",".join(SECTIONS), "--out", str(out), "--data", str(tmp_path / "data"),
         "--parts", str(tmp_path / "parts")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {n: m["status"] for n, m in res["meta"].items()} == {n: "ok" for n in SECTIONS}
    assert list(_errors(res["sections"])) == []
    s = res["sections"]
    for mode in ("eager", "static"):
        row = s["decode"][f"decode/{mode}/batch_1"]
        assert all(row[m]["tokens_per_s"] > 0 for m in ("baseline", "lrt", "official"))
        ratio = row["official"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
        assert row["official_rel_throughput"] == pytest.approx(ratio)
    for sec in ("train_compiled", "train_eager"):  # the authors' arm is timed too
        assert "step_ms" in s[sec]["run/official_interleaved:2"]
    runs = s["train_compiled"]
    assert {"run/baseline", "run/interleaved:2", "run/multi_refine:1"} <= set(runs)
    assert all(r["step_ms"] > 0 and r["optimizer_ms"] > 0 for r in runs.values() if "step_ms" in r)
    assert s["loader"]["loader/contiguous"]["next_ms_median"] >= 0
    assert "train_compiled" in (out / "summary.txt").read_text()
