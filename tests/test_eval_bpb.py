"""BPB: hand-computed values on fake losses, mode caps, and the exact sequential mode of a real LRT."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.bpb import (
    BPBMeter,
    bpb_metrics,
    evaluate_bpb,
    lrt_loss_fns,
    supported_modes,
)

LN2 = math.log(2)
torch.set_num_threads(1)

# token id -> UTF-8 bytes; id 0 is a special token (<|bos|>), 0 bytes
TOKEN_BYTES = torch.tensor([0, 1, 2, 3])


def test_bpb_hand_computed_with_special_and_ignored_targets() -> None:
    meter = BPBMeter(TOKEN_BYTES, seq_len=5, bucket_size=2)
    targets = torch.tensor([[1, 3, 0, 2, -1]])
    # the BOS target (5.0) and the ignored one (NaN) must not count
    losses = torch.tensor([[1.0, 4.0, 5.0, 3.0, math.nan]])
    meter.update(losses, targets)
    r = meter.result()
    # counted: 1.0 (1 byte) + 4.0 (3 bytes) + 3.0 (2 bytes) = 8 nats over 6 bytes
    assert r.nats == pytest.approx(8.0)
    assert r.bytes == 6
    assert r.tokens == 3
    assert r.bpb == pytest.approx(8.0 / (LN2 * 6))
    assert r.loss == pytest.approx(8.0 / 3)
    # buckets [0,2): 5 nats / 4 bytes; [2,4): 3 nats / 2 bytes; [4,5): nothing counted
    assert r.buckets[0] == pytest.approx(5.0 / (LN2 * 4))
    assert r.buckets[1] == pytest.approx(3.0 / (LN2 * 2))
    assert math.isnan(r.buckets[2])


def test_bpb_is_not_mean_loss() -> None:
    # A long token with high loss weighs by its bytes: 2 tokens, 1 and 3 bytes.
    meter = BPBMeter(TOKEN_BYTES, seq_len=2)
    meter.update(torch.tensor([[2.0, 2.0]]), torch.tensor([[1, 3]]))
    assert meter.result().bpb == pytest.approx(4.0 / (LN2 * 4))
    meter2 = BPBMeter(TOKEN_BYTES, seq_len=2)
    meter2.update(torch.tensor([[2.0, 2.0]]), torch.tensor([[1, 1]]))
    assert meter2.result().bpb == pytest.approx(4.0 / (LN2 * 2))


def test_document_positions_start_after_bos() -> None:
    meter = BPBMeter(TOKEN_BYTES, seq_len=5, bos_id=0)
    inputs = torch.tensor([[2, 0, 1, 2, 3], [1, 2, 3, 1, 2]])  # row 0: a document starts at 1
    targets = torch.tensor([[0, 1, 2, 3, 1], [2, 3, 1, 2, 3]])
    losses = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 10.0]])
    meter.update(losses, targets, inputs)
    doc = meter.result().doc_position_loss
    # Row 0: target 0 is <|bos|> (0 bytes: not counted); after the <|bos|> at 1 the targets sit
    # at context positions 0..3. Row 1 has no <|bos|>: its document began before the window,
    # so target t has read t+1 of its tokens (position 1..5, the last clamped to T-1 = 4).
    assert doc == pytest.approx([1.0, (2.0 + 5.0) / 2, (3.0 + 6.0) / 2, (4.0 + 7.0) / 2, 9.0])


def _batches(n: int, b: int = 2, t: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 4, (b, t + 1), generator=g)
        yield x[:, :-1], x[:, 1:]


def test_evaluate_bpb_caps_and_common_windows() -> None:
    fns = {
        "init": lambda x, y: torch.full(y.shape, 2.0),
        "sequential": lambda x, y: torch.full(y.shape, 1.0),
    }
    ev = evaluate_bpb(
        fns, _batches(3), TOKEN_BYTES, seq_len=4, max_tokens=100, mode_max_tokens={"sequential": 8}
    )
    # 3 batches of 8 targets: init sees all 24, sequential only the first batch (cap 8)
    assert ev.common_tokens == 8
    batches = list(_batches(3))
    all_bytes = sum(int(TOKEN_BYTES[y].sum()) for _, y in batches)
    first_bytes = int(TOKEN_BYTES[batches[0][1]].sum())
    assert ev.results["init"].bytes == all_bytes
    assert ev.results["sequential"].bytes == first_bytes
    assert ev.common["init"].bytes == first_bytes
    counted = int((TOKEN_BYTES[batches[0][1]] > 0).sum())
    assert ev.common["init"].nats == pytest.approx(2.0 * counted)
    m = bpb_metrics(ev)
    assert m["val_bpb"] == ev.results["sequential"].bpb
    assert m["bpb_gap"]["init"] == pytest.approx(
        ev.common["init"].bpb - ev.common["sequential"].bpb
    )
    assert m["bpb_gap"]["init"] == pytest.approx(counted / (LN2 * first_bytes))
    assert set(m["bpb_buckets"]) == {"init", "sequential"}


def test_max_tokens_stops_early() -> None:
    ev = evaluate_bpb(
        {"init": lambda x, y: torch.ones(y.shape)},
        _batches(5),
        TOKEN_BYTES,
        seq_len=4,
        max_tokens=9,
    )
    # whole windows until the cap is covered: a batch of 2 windows (8 targets), then 1 of the
    # next batch's 2 (12 >= 9), not the whole batch
    assert ev.common_tokens == 12


def test_baseline_modes_alias_init() -> None:
    ev = evaluate_bpb(
        {"init": lambda x, y: torch.ones(y.shape)}, _batches(1), TOKEN_BYTES, seq_len=4
    )
    m = bpb_metrics(ev, alias_modes=["sequential", "merged"])
    assert m["bpb"]["sequential"] == m["bpb"]["init"] == m["bpb"]["merged"]
    assert "bpb_gap" not in m


# -----------------------------------------------------------------------------
# Real tiny LRT: sequential BPB == BPB recomputed from lrt.decode.sequential_forward


def _tiny_lrt(vocab: int = 37, seq_len: int = 12):
    lrt = pytest.importorskip("lrt")
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(
        vocab_size=vocab, depth=2, seq_len=seq_len, n_embd=32, n_head=2, pathway="shared"
    )
    model = lrt.LRT(cfg)
    model.init_weights()
    with torch.no_grad():  # random everything (init zeroes output projections): pathway matters
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def test_sequential_bpb_matches_exact_decoding() -> None:
    decode = pytest.importorskip("lrt.decode")
    vocab, T = 37, 12
    model = _tiny_lrt(vocab, T)
    assert supported_modes(model) == ("init", "merged", "refine", "sequential")
    token_bytes = torch.randint(1, 5, (vocab,), generator=torch.Generator().manual_seed(1))
    token_bytes[0] = 0  # a special token
    g = torch.Generator().manual_seed(2)
    data = torch.randint(0, vocab, (3, 2, T + 1), generator=g)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    ev = evaluate_bpb(
        lrt_loss_fns(model, ["init", "sequential"]), batches, token_bytes, seq_len=T, bucket_size=4
    )
    # independent: one sequence at a time through exact decoding, plain Python sums
    nats, nbytes = 0.0, 0
    for x, y in batches:
        for b in range(x.size(0)):
            logp = torch.log_softmax(decode.sequential_forward(model, x[b : b + 1])[0].double(), -1)
            for t in range(T):
                nb = int(token_bytes[y[b, t]])
                if nb > 0:
                    nats -= float(logp[t, y[b, t]])
                    nbytes += nb
    expected = nats / (math.log(2) * nbytes)
    assert ev.results["sequential"].bytes == nbytes
    assert ev.results["sequential"].bpb == pytest.approx(expected, rel=1e-5)
    # the memory changes predictions, so the zero-memory pass scores differently
    assert abs(ev.results["init"].bpb - expected) > 1e-4


# -----------------------------------------------------------------------------
# End to end: evaluate_variant on real shards (skips until tokenizer/loader are built)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    import sysconfig
    from pathlib import Path

    packing = pytest.importorskip(
        "pipeline.data.packing", reason="pipeline.data.packing not built yet", exc_type=ImportError
    )
    tokmod = pytest.importorskip(
        "pipeline.data.tokenizer",
        reason="pipeline.data.tokenizer not built yet",
        exc_type=ImportError,
    )
    pytest.importorskip(
        "pipeline.data.loader", reason="pipeline.data.loader not built yet", exc_type=ImportError
    )
    docs, size = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        docs.append(p.read_text(errors="ignore")[:4000])
        size += len(docs[-1])
        if size > 60_000:
            break
    tok = tokmod.Tokenizer.train(docs, 300)
    out = tmp_path_factory.mktemp("tokens")
    packing.pack(docs, tok, out, shard_tokens=1 << 14, val_fraction=0.2, seed=0)
    tok.save(out / "tokenizer.json")
    return out, tok


def test_training_periodic_bpb_counts_every_target(packed) -> None:
    """Training's validation (`pipeline.evaluation.periodic`) against plain Python sums of
    log-softmax of the logits: the nats of every non-ignored target, 0-byte special targets
    included, over the targets' bytes; the eval stage's `BPBMeter` leaves the special targets
    out, so its BPB on the same windows is lower."""
    import numpy as np

    from pipeline.data.loader import validation_loader
    from pipeline.evaluation.periodic import periodic_bpb

    lrt = pytest.importorskip("lrt")
    out, tok = packed
    B, T, n_batches = 4, 32, 2  # a <|bos|> target in the second batch
    model = _tiny_lrt(int(tok.vocab_size), T)
    tb = np.asarray(tok.token_byte_lengths())
    strategy = lrt.StrategyConfig(name="interleaved", subsets=2)
    got = periodic_bpb(model, out, token_bytes=tb, eval_tokens=n_batches * B * T - 5,
                       batch_size=B, seq_len=T, device=torch.device("cpu"),
                       modes=("init", "merged"), strategy=strategy,
                       tokenizer_hash=tok.hash)  # fmt: skip
    loader = validation_loader(out, B, T, tokenizer_hash=tok.hash)
    # copies: the loader reuses its pinned slots; zip draws no batch past the n-th
    pairs = zip(range(n_batches), loader, strict=False)
    batches = [(x.long().clone(), y.long().clone()) for _, (x, y) in pairs]
    loader.close()
    special = 0
    for mode, key in (("init", "val_bpb"), ("merged", "val_bpb_merged")):
        nats, nbytes, ntok = 0.0, 0, 0
        for x, y in batches:
            logp = torch.log_softmax(model.logits(x, mode, strategy).double(), -1)  # (B, T, V)
            for b in range(B):
                for t in range(T):
                    target = int(y[b, t])
                    if target < 0:
                        continue
                    nats -= float(logp[b, t, target])
                    nbytes += int(tb[target])
                    ntok += 1
                    special += int(tb[target] == 0)
        assert got[key] == pytest.approx(nats / (LN2 * nbytes), rel=1e-5)
        if mode == "init":
            assert got["val_loss"] == pytest.approx(nats / ntok, rel=1e-5)
    assert special > 0  # <|bos|> targets in these windows: the definition matters here
    meter = evaluate_bpb(lrt_loss_fns(model, ["init"]), batches, tb, seq_len=T)
    assert meter.results["init"].bpb < got["val_bpb"] - 1e-3


def test_evaluate_variant_end_to_end(packed, tmp_path) -> None:
    import json

    import lrt
    from pipeline.config.settings import load_settings
    from pipeline.evaluation.run import evaluate_variant
    from pipeline.train.checkpoint import save_model

    data_dir, tok = packed
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(
        vocab_size=tok.vocab_size, depth=1, seq_len=16, n_embd=32, n_head=2, pathway="shared"
    )
    strat = lrt.StrategyConfig(name="interleaved", subsets=2)
    model = lrt.LRT(cfg)
    model.init_weights()
    save_model(
        tmp_path / "runs" / "lrt" / "model.pt",
        model,
        model_config=cfg.to_dict(),
        strategy_config=strat.__dict__,
        step=3,
    )
    settings = load_settings(
        None,
        [
            f"tokenizer.out_dir={data_dir}",
            f"train.out_dir={tmp_path / 'runs'}",
            "train.device=cpu",
            "train.device_batch_size=4",
            "eval.bpb_max_tokens=128",
            "eval.sequential_max_tokens=64",
            "eval.bucket_size=8",
            "eval.modes=[init, merged, sequential]",
            f"eval.core_dir={tmp_path / 'no_core'}",
            "eval.icl_max_items=2",
            "eval.max_new_tokens=3",
            "eval.samples_prompts=[hello]",
        ],
        env={},
    )
    metrics = evaluate_variant(settings, "lrt")
    run = tmp_path / "runs" / "lrt"
    assert json.loads((run / "metrics.json").read_text())["val_bpb"] == pytest.approx(
        metrics["val_bpb"]
    )
    assert set(metrics["bpb"]) == {"init", "merged", "sequential"}
    assert metrics["val_bpb"] == metrics["bpb"]["sequential"]
    assert metrics["step"] == 3
    # metrics.json: headline numbers only; the rest in eval_details.json ("metrics")
    assert set(metrics) == {"step", "val_bpb", "val_loss", "bpb", "bpb_gap", "icl_gain", "icl_acc"}
    assert set(metrics["bpb_gap"]) == {"merged"} and set(metrics["icl_gain"]) == {
        "init",
        "sequential",
    }
    assert "core" not in metrics  # no task files: skipped
    assert set(metrics["icl_acc"]["sequential"]) == {"kv_recall", "pattern"}
    samples = json.loads((run / "samples.json").read_text())
    assert samples[0]["prompt"] == "hello" and len(samples[0]["tokens"]) == 3
    details = json.loads((run / "eval_details.json").read_text())
    assert set(details["metrics"]["bpb_buckets"]["init"]) == {"0-7", "8-15"}
    assert set(details["metrics"]["bpb_gap"]) == {"init"}
    assert not details["core_status"]["available"]
    assert details["core_status"]["message"].startswith("CORE skipped: no CORE task files")
    assert details["bpb_common"]["tokens"] == 64


# -----------------------------------------------------------------------------
# Compute sweep table (pipeline/sweep.py): BPB of the baseline at equal compute


def test_sweep_equal_compute_table() -> None:
    from pipeline.sweep import equal_compute_table, interpolate_log, sweep_markdown

    assert interpolate_log([1.0, 100.0], [2.0, 1.0], 10.0) == pytest.approx(1.5)
    assert interpolate_log([1.0, 100.0], [2.0, 1.0], 1000.0) is None
    runs = [
        {"method": "baseline", "tokens_per_param": 1.0, "effective_flops": 1e12, "val_bpb": 2.0},
        {"method": "baseline", "tokens_per_param": 2.0, "effective_flops": 1e14, "val_bpb": 1.0},
        # LRT at R=1 costs 10x the baseline's compute here: compare with the baseline at 1e13
        {"method": "lrt", "tokens_per_param": 1.0, "effective_flops": 1e13, "val_bpb": 1.4},
        {"method": "lrt", "tokens_per_param": 2.0, "effective_flops": 1e15, "val_bpb": 0.9},
    ]
    rows = equal_compute_table(runs)
    assert [r["method"] for r in rows] == ["lrt", "lrt"]
    assert rows[0]["baseline_bpb_equal_compute"] == pytest.approx(1.5)
    assert rows[0]["delta_equal_compute"] == pytest.approx(-0.1)
    assert rows[0]["baseline_bpb_equal_tokens"] == 2.0
    assert rows[1]["baseline_bpb_equal_compute"] is None  # beyond the baseline's largest budget
    assert rows[1]["delta_equal_tokens"] == pytest.approx(-0.1)
    md = sweep_markdown({"runs": runs, "equal_compute": rows})
    assert "| lrt | 1 | 1e+13 | 1.4 | 1.5 | -0.1 | 2 | -0.6 |" in md


# -----------------------------------------------------------------------------
# evaluate_model on given batches (no shards needed)


class ByteTokenizer:
    bos_id = 256
    vocab_size = 257
    hash = "test"

    @staticmethod
    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    @staticmethod
    def decode(ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @staticmethod
    def token_byte_lengths():
        return torch.tensor([1] * 256 + [0])


@pytest.mark.parametrize("pathway", ["shared", "none"])
def test_evaluate_model_metrics(pathway: str, tmp_path) -> None:
    import json

    import lrt
    from pipeline.config.settings import EvalSettings
    from pipeline.evaluation.run import evaluate_model

    T = 16
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(vocab_size=257, depth=1, seq_len=T, n_embd=32, n_head=2, pathway=pathway)
    model = lrt.LRT(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    (tmp_path / "copa.jsonl").write_text(
        "".join(
            json.dumps({"query": f"q{i}", "choices": ["a b", "c"], "gold": i % 2}) + "\n"
            for i in range(4)
        )
    )
    ev = EvalSettings(
        bpb_max_tokens=96,
        sequential_max_tokens=32,
        bucket_size=8,
        modes=["init", "refine", "sequential"],
        core_dir=str(tmp_path),
        core_max_items=3,
        icl_max_items=2,
        samples_prompts=["hi", "there"],
        max_new_tokens=2,
    )
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 257, (3, 2, T + 1), generator=g)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    metrics, details, samples = evaluate_model(
        model,
        ByteTokenizer(),
        ev,
        val_batches=batches,
        strategy=lrt.StrategyConfig(name="interleaved"),
        batch_size=2,
        progress=False,
    )
    assert set(metrics["bpb"]) == {"init", "refine", "sequential", "merged"} - (
        {"merged"} if pathway == "none" else set()
    )
    assert set(metrics["core"]) == {"init", "sequential"}
    assert set(metrics["icl_acc"]["sequential"]) == {"kv_recall", "pattern"}
    assert details["core_tasks"]["init"]["copa"]["n"] == 3
    assert [s["prompt"] for s in samples] == ["hi", "there"]
    assert all(len(s["tokens"]) == 2 for s in samples)
    if pathway == "none":
        assert details["modes_computed"] == ["init"]
        # sequential = init over the sequential mode's windows; other modes repeat init
        assert metrics["bpb"]["refine"] == metrics["bpb"]["init"]
        assert metrics["val_bpb"] == metrics["bpb"]["sequential"]
        assert metrics["bpb"]["sequential"] == pytest.approx(details["bpb_common"]["bpb"]["init"])
        assert details["bpb_common"]["tokens"] == 32
        assert "bpb_gap" not in metrics  # no merged mode: no train/test gap
        assert details["metrics"]["bpb_gap"]["init"] == 0.0
        assert metrics["core"]["sequential"] == metrics["core"]["init"]
    else:
        assert details["modes_computed"] == ["init", "refine", "sequential", "merged"]
        assert details["bpb_common"]["tokens"] == 32  # sequential stops after its cap
        direct = evaluate_bpb(
            lrt_loss_fns(model, ["sequential"]),
            batches[:1],
            ByteTokenizer.token_byte_lengths(),
            seq_len=T,
        )
        assert metrics["val_bpb"] == pytest.approx(direct.results["sequential"].bpb)
        assert set(metrics["bpb_gap"]) == {"merged"}
        assert set(details["metrics"]["bpb_gap"]) == {"init", "refine"}


def test_run_sweep_smoke(packed, tmp_path) -> None:
    import json

    from pipeline.config.settings import load_settings
    from pipeline.sweep import SweepOptions, run_sweep

    data_dir, _ = packed
    settings = load_settings(
        None,
        [
            f"tokenizer.out_dir={data_dir}",
            f"train.out_dir={tmp_path / 'runs'}",
            f"report.out_dir={tmp_path / 'reports'}",
            "train.device=cpu",
        ],
        env={},
    )
    opts = SweepOptions()
    opts.model = {"depth": 1, "n_embd": 32, "n_head": 2, "seq_len": 16}
    opts.train.update(total_batch_tokens=64, device_batch_size=4)
    opts.eval.update(bpb_max_tokens=128, sequential_max_tokens=64, core_dir=str(tmp_path / "none"))
    result = run_sweep(
        settings, budgets=[0.02], methods=["baseline", "lrt_interleaved"], options=opts
    )
    runs = result["runs"]
    # baseline at 0.02 and at the matched-compute budget, then the LRT run
    assert [r["method"] for r in runs] == ["baseline", "baseline", "lrt_interleaved"]
    lrt_run = runs[2]
    assert runs[1]["effective_flops"] >= lrt_run["effective_flops"] > runs[0]["effective_flops"]
    assert set(lrt_run["bpb"]) >= {"init", "merged", "sequential"}
    (row,) = result["equal_compute"]
    assert row["baseline_bpb_equal_compute"] is not None
    on_disk = json.loads((tmp_path / "reports" / "sweep.json").read_text())
    assert len(on_disk["runs"]) == 3
    assert (tmp_path / "reports" / "sweep.md").is_file()


def test_evaluate_variant_tracked_in_mlflow(packed, tmp_path) -> None:
    """The eval run carries the variant's model and strategy params (UI grouping by pathway or
    strategy) and a logged pyfunc model that generates from a prompt; a real SQLite store."""
    import lrt
    from pipeline.config.settings import load_settings
    from pipeline.evaluation.run import evaluate_variant
    from pipeline.tracking import Tracker
    from pipeline.train.checkpoint import save_model

    data_dir, tok = packed
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(
        vocab_size=tok.vocab_size, depth=1, seq_len=16, n_embd=32, n_head=2, pathway="shared"
    )
    model = lrt.LRT(cfg)
    model.init_weights()
    strat = lrt.StrategyConfig(name="interleaved", subsets=2)
    save_model(tmp_path / "runs" / "lrt" / "model.pt", model, model_config=cfg.to_dict(),
               strategy_config=strat.__dict__, step=3)  # fmt: skip
    settings = load_settings(
        None,
        [
            f"tokenizer.out_dir={data_dir}",
            f"train.out_dir={tmp_path / 'runs'}",
            "train.device=cpu",
            "eval.bpb_max_tokens=64",
            "eval.modes=[init]",
            f"eval.core_dir={tmp_path / 'no_core'}",
            "eval.icl_enabled=false",
            "eval.samples_prompts=[]",
            f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
            f"tracking.artifact_location={tmp_path / 'art'}",
        ],
        env={},
    )
    tracker = Tracker(settings.tracking, project_dir=tmp_path, system_metrics=False)
    evaluate_variant(settings, "lrt", tracker=tracker)
    client = tracker.client
    [run] = [
        r for r in client.search_runs([tracker.experiment_id]) if r.info.run_name == "eval/lrt"
    ]
    assert run.data.params["model.pathway"] == "shared"
    assert run.data.params["strategy.name"] == "interleaved"
    assert (
        run.data.tags["lrt.pathway"] == "shared" and run.data.tags["lrt.strategy"] == "interleaved"
    )
    assert "val_bpb" in run.data.metrics
    [logged] = client.search_logged_models([tracker.experiment_id])
    assert logged.source_run_id == run.info.run_id
    import mlflow.pyfunc

    generator = mlflow.pyfunc.load_model(logged.model_uri)
    [text] = generator.predict([{"prompt": "def ", "max_new_tokens": 4}])
    from lrt.decode import generate

    ids = [tok.bos_id, *tok.encode("def ")]
    assert text == tok.decode(
        generate(model.eval(), ids, 4, temperature=0.0)[0, len(ids) :].tolist()
    )
