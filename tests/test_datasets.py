"""Sharded datasets (pipeline.data.datasets) against a real HTTP server on 127.0.0.1.

The server (`pipeline.benchmarks.download.ShardServer`) serves parquet shards written here,
honours Range, answers HEAD like the Hugging Face hub, and can throttle a shard, cut one
transfer short or fail a shard. No other network.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from pipeline.benchmarks.download import REPO_COMMIT, ShardServer
from pipeline.data.datasets import (
    DATASETS,
    InsufficientDiskError,
    Progress,
    UnknownDatasetError,
    dataset,
    download_dataset,
    hub_available,
    plan,
    plan_from_settings,
    run_tokens,
    shards_for_tokens,
    spec_from_settings,
)
from pipeline.data.http import DownloadError

FINAL = 1822  # fineweb-edu-100b's last shard


@pytest.fixture
def server() -> Iterator[ShardServer]:
    with ShardServer() as s:
        yield s


def _texts(index: int, n: int = 40) -> list[str]:
    return [f"shard {index} document {j} " + "lorem ipsum " * (j % 7 + 1) for j in range(n)]


def _write_shard(path: Path, index: int) -> bytes:
    pl.DataFrame({"text": _texts(index)}).write_parquet(path)
    return path.read_bytes()


def _serve(server: ShardServer, tmp_path: Path, indices: list[int]) -> dict[int, bytes]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    out = {}
    for i in indices:
        name = f"shard_{i:05d}.parquet"
        out[i] = server.files[name] = _write_shard(src / name, i)
    return out


def _data(server: ShardServer | None, tmp_path: Path, **kw: object) -> SimpleNamespace:
    """A `data` section with the issue-18 fields (DataSettings gets them from the coordinator)."""
    fields = {
        "source": "fineweb-edu",
        "base_url": None if server is None else f"{server.url}/data",
        "num_shards": 3,
        "workers": 3,
        "retries": 2,
        "timeout_s": 5.0,
        "raw_dir": str(tmp_path / "raw"),
    }
    fields.update(kw)
    return SimpleNamespace(**fields)


def _run(data: SimpleNamespace, **kw: object):
    stream = io.StringIO()
    result = download_dataset(
        data, data.raw_dir, backoff_s=0.01, stream=stream, progress_interval_s=0.0, **kw
    )
    return result, stream.getvalue()


# ---------------------------------------------------------------------------------------------
# Table and plan
# ---------------------------------------------------------------------------------------------


def test_table_matches_the_reference_datasets() -> None:
    fw, cm = DATASETS["fineweb-edu-100b"], DATASETS["climbmix-400b"]
    # nanochat/dataset.py (both repos): base URLs, MAX_SHARD, shard_{index:05d}.parquet
    assert fw.url(FINAL) == (
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/"
        "shard_01822.parquet"
    )
    assert cm.url(0).endswith("karpathy/climbmix-400b-shuffle/resolve/main/shard_00000.parquet")
    assert (fw.validation_shard, cm.validation_shard) == (1822, 6542)
    assert (fw.repo_id, cm.repo_id) == (
        "karpathy/fineweb-edu-100b-shuffle",
        "karpathy/climbmix-400b-shuffle",
    )
    assert dataset("fineweb-edu") is fw and dataset("climbmix") is cm
    with pytest.raises(UnknownDatasetError, match="climbmix"):
        dataset("climbmx")


def test_validation_is_pinned_whatever_num_shards_is() -> None:
    fw = dataset("fineweb-edu")
    for n in (1, 3, 240, 1822):
        p = plan(fw, n)
        assert p.val == p.validation_shard == FINAL
        assert p.train == tuple(range(n))
    assert plan(dataset("climbmix"), 170).val == 6542
    with pytest.raises(ValueError, match="1822 training shards"):
        plan(fw, 1823)
    # a validation shard inside the range is skipped, not trained on
    inner = dataclasses.replace(fw, val_shard=2)
    assert plan(inner, 4).train == (0, 1, 3, 4) and plan(inner, 4).val == 2


def test_parts_split_the_training_shards_and_part_one_fetches_validation() -> None:
    fw = dataset("fineweb-edu")
    parts = [plan(fw, 7, part=(i, 3)) for i in (1, 2, 3)]
    assert [p.train for p in parts] == [(0, 3, 6), (1, 4), (2, 5)]
    assert [p.val for p in parts] == [FINAL, None, None]
    assert all(p.validation_shard == FINAL for p in parts)
    with pytest.raises(ValueError, match="part 4/3"):
        plan(fw, 7, part=(4, 3))


def test_settings_build_specs() -> None:
    ns = SimpleNamespace
    assert spec_from_settings(ns(source="climbmix", base_url=None)).repo_id is not None
    mirror = spec_from_settings(ns(source="fineweb-edu", base_url="http://m/x", val_shard=7))
    assert (mirror.repo_id, mirror.url(3), mirror.validation_shard) == (
        None,
        "http://m/x/shard_00003.parquet",
        7,
    )
    generic = spec_from_settings(
        ns(source="parquet-url", base_url="http://h/d", final_shard=9, file_pattern="p{index}.pq")
    )
    assert (generic.url(9), generic.validation_shard) == ("http://h/d/p9.pq", 9)
    with pytest.raises(ValueError, match="final_shard"):
        spec_from_settings(ns(source="parquet-url", base_url="http://h/d"))


# ---------------------------------------------------------------------------------------------
# num_shards: auto
# ---------------------------------------------------------------------------------------------


def test_auto_shard_arithmetic_by_hand() -> None:
    # 40960 tokens x 4.5 bytes / 10000 bytes per shard = 18.43 -> 19 shards
    assert shards_for_tokens(40960, 4.5, 10_000) == 19
    assert shards_for_tokens(10_000, 1.0, 10_000) == 1
    spec = dataclasses.replace(dataset("fineweb-edu"), shard_text_bytes=10_000)
    p = plan(spec, "auto", tokens=40960)
    assert p.train == tuple(range(19)) and p.auto["bytes_per_token"] == 4.5


def test_run_tokens_follow_the_training_budget() -> None:
    from lrt.model import LRT
    from pipeline.config.settings import load_settings, variant_settings

    s = load_settings(None, ["train.max_steps=10", "train.total_batch_tokens=4096"])
    assert run_tokens(s)["tokens"] == 10 * 4096
    # a variant's own budget (baseline_2x) is what the download must cover
    s = load_settings(
        None,
        [
            "train.max_steps=10",
            "train.total_batch_tokens=4096",
            "train.variants={b: {}, b2: {train: {max_steps: 25}}}",
        ],
    )
    assert run_tokens(s)["tokens"] == 25 * 4096 and run_tokens(s)["variant"] == "b2"
    s = load_settings(
        None,
        ["train.max_steps=null", "train.tokens_per_param=10", "model.depth=2", "model.seq_len=64"],
    )
    run = run_tokens(s, vocab_size=512)
    import torch

    expected = 0
    for name in s.train.variants:  # scaling params counted here from the model's tensors
        with torch.device("meta"):
            model = LRT(variant_settings(s, name)[0].to_config(512))
        params = sum(
            p.numel()
            for n, p in model.named_parameters()
            if p.ndim >= 2 and n.split(".")[0] in ("blocks", "lm_head", "pathway")
        )
        batch = s.train.total_batch_tokens
        expected = max(expected, max(1, round(10 * params / batch)) * batch)
    assert run["tokens"] == expected and run["variant"] == "lrt"


def test_auto_measures_bytes_per_token_with_an_existing_tokenizer(tmp_path: Path) -> None:
    from pipeline.config.settings import load_settings
    from pipeline.data.tokenizer import Tokenizer

    tok = Tokenizer.train(_texts(0, 200), 300)
    tok.save(tmp_path / "tok.bpe")
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_shard(raw / f"shard_{FINAL:05d}.parquet", FINAL)
    s = load_settings(
        None,
        [
            f"tokenizer.pretrained={tmp_path / 'tok.bpe'}",
            "train.max_steps=10",
            "train.total_batch_tokens=4096",
        ],
    )
    data = _data(None, tmp_path, num_shards="auto")
    _, p = plan_from_settings(data, settings=s, local_dirs=[raw])
    texts = _texts(FINAL)
    measured = sum(len(t.encode()) for t in texts) / sum(len(tok.encode(t)) for t in texts)
    assert p.auto["bytes_per_token"] == pytest.approx(measured)
    assert "measured" in p.auto["bytes_per_token_source"]
    assert p.auto["tokens"] == 40960
    assert len(p.train) == math.ceil(40960 * measured / 250e6)

    # the tokenizer a previous tokenize left in tokenizer.out_dir counts only while it matches
    # tokenizer.vocab_size (otherwise tokenize will train a new one): then the default applies
    out = tmp_path / "tokens"
    out.mkdir()
    tok.save(out / "tokenizer.bpe")
    budget = ["train.max_steps=10", "train.total_batch_tokens=4096", f"tokenizer.out_dir={out}"]
    for vocab, expected in ((tok.vocab_size, measured), (512, 4.5)):
        s = load_settings(None, [*budget, f"tokenizer.vocab_size={vocab}"])
        _, p = plan_from_settings(data, settings=s, local_dirs=[raw])
        assert p.auto["bytes_per_token"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def test_fetches_training_shards_and_the_final_shard_with_a_slow_and_a_cut_one(
    tmp_path: Path, server: ShardServer
) -> None:
    served = _serve(server, tmp_path, [0, 1, 2, 3, 4, FINAL])
    server.slow["shard_00001.parquet"] = 20_000.0  # bytes/s: ~0.2 s for this shard
    server.cut_once["shard_00002.parquet"] = len(served[2]) // 2
    data = _data(server, tmp_path)
    result, out = _run(data)
    names = [e["name"] for e in result.entries]
    assert names == [f"shard_{i:05d}.parquet" for i in (0, 1, 2, FINAL)]
    assert [e["split"] for e in result.entries] == ["train"] * 3 + ["val"]
    assert sorted(set(server.names())) == names  # shards 3 and 4 never asked for
    ranges = [r for m, p, r, _ in server.requests if p.endswith("shard_00002.parquet") and r]
    assert ranges == [f"bytes={len(served[2]) // 2}-"]  # resumed, not restarted
    raw = Path(data.raw_dir)
    for i, body in served.items():
        if i in (3, 4):
            assert not (raw / f"shard_{i:05d}.parquet").exists()
        else:
            assert (raw / f"shard_{i:05d}.parquet").read_bytes() == body
    assert sorted(p.name for p in raw.iterdir()) == names  # no .tmp / .part left
    assert result.manifest_extra["validation_shard"] == FINAL
    assert "3 training shard(s) 0..2 + validation shard 1822" in out
    assert "download: 4/4 shards" in out and "MB/s" in out

    # fewer shards later: the same validation text, nothing fetched again
    before = len(server.names())
    again, _ = _run(_data(server, tmp_path, num_shards=2))
    assert len(server.names()) == before
    assert again.entries == [result.entries[i] for i in (0, 1, 3)]  # manifest is reproducible
    assert again.origins == ["present"] * 3


def test_part_two_of_two_fetches_its_shards_only(tmp_path: Path, server: ShardServer) -> None:
    _serve(server, tmp_path, [0, 1, 2, 3, FINAL])
    result, out = _run(_data(server, tmp_path, num_shards=4), part=(2, 2))
    assert sorted(server.names()) == ["shard_00001.parquet", "shard_00003.parquet"]
    assert result.manifest_extra["part"] == [2, 2]
    assert "validation shard 1822 is fetched by part 1" in out


def test_first_hard_error_stops_and_names_the_url(tmp_path: Path, server: ShardServer) -> None:
    _serve(server, tmp_path, [0, 1, 2, FINAL])
    server.fail["shard_00001.parquet"] = 404
    data = _data(server, tmp_path, workers=1)
    with pytest.raises(DownloadError, match=r"/data/shard_00001\.parquet: HTTP 404"):
        _run(data)
    assert server.names() == ["shard_00000.parquet", "shard_00001.parquet"]  # 2, 1822 not begun
    raw = Path(data.raw_dir)
    assert pl.read_parquet(raw / "shard_00000.parquet")["text"].to_list() == _texts(0)


def test_a_shard_that_is_not_parquet_fails_after_one_refetch(
    tmp_path: Path, server: ShardServer
) -> None:
    _serve(server, tmp_path, [0, FINAL])
    server.files["shard_00000.parquet"] = b"not parquet" * 100
    with pytest.raises(DownloadError, match="shard_00000.parquet: downloaded file is not valid"):
        _run(_data(server, tmp_path, num_shards=1, workers=1))
    assert server.names().count("shard_00000.parquet") == 2
    assert not (Path(tmp_path / "raw") / "shard_00000.parquet").exists()


def test_disk_space_is_refused_before_any_transfer(
    tmp_path: Path, server: ShardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    _serve(server, tmp_path, [0, 1, 2, FINAL])
    real = shutil.disk_usage
    monkeypatch.setattr(
        "pipeline.data.datasets.planning.shutil.disk_usage",
        lambda p: real(p)._replace(free=50_000_000),
    )
    with pytest.raises(InsufficientDiskError, match=r"need about 400\.0 MB but .* 50\.0 MB free"):
        _run(_data(server, tmp_path))
    assert server.requests == []


def test_reuses_a_nanochat_base_data_folder(tmp_path: Path, server: ShardServer) -> None:
    base_data = tmp_path / "base_data"
    base_data.mkdir()
    for i in (0, 1, FINAL):
        _write_shard(base_data / f"shard_{i:05d}.parquet", i)
    (base_data / "shard_00002.parquet.tmp").write_bytes(b"partial")  # nanochat's temp name
    result, _ = _run(_data(server, tmp_path, num_shards=2, reuse_dir=str(base_data)))
    assert server.requests == []
    assert result.origins == ["reused"] * 3
    for e in result.entries:
        assert os.path.samefile(Path(tmp_path / "raw" / e["name"]), base_data / e["name"])


@pytest.mark.skipif(not hub_available(), reason="huggingface_hub is not installed")
def test_hub_datasets_go_through_huggingface_hub_and_its_cache(
    tmp_path: Path, server: ShardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = _serve(server, tmp_path, [0, 1, FINAL])
    server.cut_once["shard_00001.parquet"] = len(served[1]) // 3
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    # huggingface_hub's user-agent code fetches an "agent harness" registry from the hub unless
    # telemetry is off: no request but ours may leave the test (nor reach the server).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    cache = tmp_path / "hf-cache"
    data = _data(None, tmp_path, num_shards=2, hub_cache=str(cache))
    result, _ = _run(data)
    assert result.origins == ["hub"] * 3
    prefix = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/"
    assert {p for _, p, _, _ in server.requests} == {
        prefix + f"shard_{i:05d}.parquet" for i in (0, 1, FINAL)
    }
    assert {a for *_, a in server.requests} == {"Bearer hf_test_token"}
    # the cut transfer was retried by the hub client (it resumes from its last 10 MB chunk, so
    # a file this small starts over) and the shard is whole
    assert server.names("GET").count("shard_00001.parquet") == 2
    for i, body in served.items():
        assert (tmp_path / "raw" / f"shard_{i:05d}.parquet").read_bytes() == body
    snapshot = cache / "datasets--karpathy--fineweb-edu-100b-shuffle" / "snapshots" / REPO_COMMIT
    assert os.path.samefile(snapshot / "shard_00000.parquet", tmp_path / "raw/shard_00000.parquet")

    # another raw folder with the same cache: metadata only, no shard fetched twice
    gets = len(server.names("GET"))
    other = _data(None, tmp_path, num_shards=2, hub_cache=str(cache), raw_dir=str(tmp_path / "b"))
    _run(other)
    assert len(server.names("GET")) == gets

    # a shard the hub does not have: one typed error naming the repo file and the endpoint
    missing = _data(None, tmp_path, num_shards=3, hub_cache=str(cache), workers=1)
    with pytest.raises(DownloadError, match=r"fineweb-edu-100b-shuffle:shard_00002\.parquet at"):
        _run(missing)


def test_progress_on_a_tty_is_one_bar() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream=stream, tty=True)
    progress.start_shard(0)
    progress.add_bytes(0, 1_000_000)
    progress.finish_shard(0, 1_000_000)
    snap = progress.snapshot()
    progress.close()
    assert (snap["done"], snap["transferred"]) == (1, 1_000_000) and snap["eta"] > 0
    assert "1/2" in stream.getvalue()


def test_cli_download_fetches_shards_0_to_2_and_1822(tmp_path: Path, server: ShardServer) -> None:
    from pipeline.config.settings import DataSettings

    if "workers" not in DataSettings.model_fields:
        pytest.skip("DataSettings has no issue-18 fields yet (data.workers, data.val_shard)")
    from click.testing import CliRunner

    from pipeline.cli import main

    _serve(server, tmp_path, [0, 1, 2, 3, FINAL])
    raw = tmp_path / "raw"
    args = ["download", "--set", "data.source=fineweb-edu", "--set", "data.num_shards=3"]
    args += ["--set", f"data.base_url={server.url}/data", "--set", f"data.raw_dir={raw}"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = (raw / "manifest.json").read_text()
    assert sorted(set(server.names())) == [f"shard_{i:05d}.parquet" for i in (0, 1, 2, FINAL)]
    assert '"validation_shard": 1822' in manifest
