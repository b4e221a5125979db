"""Train-step and decoding benchmark: LRT strategies relative to the baseline, in one process.

For the baseline (pathway "none") and each LRT strategy it times full training steps (forward,
backward, optimizer step) on random tokens, then decoding throughput (one token per forward
with the KV cache; LRT also carries its memory) at batch 1 and 32. On CUDA it uses bf16
autocast, optionally torch.compile, and reports peak memory and MFU (`lrt.accounting`).

    python -m pipeline.benchmarks.step --depth 2 --n-embd 64 --n-head 2 --vocab-size 512 \
        --seq-len 128 --batch-size 4 --steps 5 --out step.json            # CPU smoke
    python -m pipeline.benchmarks.step --depth 20 --seq-len 2048 --batch-size 8 --compile
    python -m pipeline.benchmarks.step --features-off ...   # the backbone without nanochat's
        # features (full attention, no value embeddings, no lambdas); or one toggle at a time:
        # --window-pattern L, --no-value-embeds, --no-lambdas, --n-kv-head 1

Every figure is measured in this process against a baseline measured the same way; compare
numbers only within one run (one device).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrt import accounting
from lrt.config import LRTConfig, StrategyConfig
from pipeline.benchmarks.decode_timing import DECODE_MODES, time_decode
from pipeline.benchmarks.train_timing import describe_error, time_train, time_train_interleaved

DEFAULT_STRATEGIES = ("interleaved:2", "multi_refine:1", "chunked:64")


def parse_strategy(spec: str | StrategyConfig) -> StrategyConfig:
    """ "interleaved:2" / "multi_refine:1" / "chunked:64" / "none" -> StrategyConfig."""
    if isinstance(spec, StrategyConfig):
        return spec
    name, _, arg = spec.partition(":")
    if not arg:
        return StrategyConfig(name=name)
    size = int(arg)
    field = {"interleaved": "subsets", "multi_refine": "refine_steps", "chunked": "chunk_size"}.get(
        name
    )
    if field is None:
        raise ValueError(f"strategy {name!r} takes no size (got {spec!r})")
    return StrategyConfig(name=name, **{field: size})


def label(st: StrategyConfig) -> str:
    size = {
        "interleaved": st.subsets,
        "multi_refine": st.refine_steps,
        "chunked": st.chunk_size,
    }.get(st.name)
    return st.name if size is None else f"{st.name}:{size}"


# ---------------------------------------------------------------------------------------------
# Driver


def run(
    depth: int = 2,
    strategies: Sequence[str | StrategyConfig] = DEFAULT_STRATEGIES,
    device: str | torch.device | None = None,
    steps: int = 5,
    batch_size: int = 4,
    seq_len: int = 128,
    compile: bool = False,  # noqa: A002 - the documented keyword
    *,
    vocab_size: int = 512,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_kv_head: int | None = None,
    window_pattern: str = "SSSL",
    use_value_embeds: bool = True,
    use_resid_lambdas: bool = True,
    use_x0_residual: bool = True,
    pathway: str = "shared",
    warmup: int = 2,
    decode_tokens: int = 32,
    decode_batches: Sequence[int] = (1, 32),
    decode_rounds: int = 3,
    decode_modes: Sequence[str] = ("eager",),
    interleave: bool | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Benchmark training steps and decoding of baseline vs LRT strategies on one device.

    Args:
        depth, n_embd, n_head, vocab_size, seq_len: model (n_embd/n_head None -> nanochat rule).
        n_kv_head, window_pattern, use_value_embeds, use_resid_lambdas, use_x0_residual: the
            backbone's features (`lrt.LRTConfig`; defaults = nanochat's backbone). On CPU the
            windowed ("S") layers use dense masks, so "L" is the faster pattern there.
        strategies: LRT strategies ("interleaved:2", "multi_refine:1", "chunked:64", ...).
        device: "cuda", "cpu", ...; None -> CUDA when available.
        steps, warmup, batch_size: timed steps (median reported), untimed warmup steps, rows.
        compile: torch.compile the model (CUDA).
        pathway: the LRT variant ("shared", "layerwise" or "official").
        decode_tokens, decode_batches, decode_rounds: decoding length, batch sizes, and
            alternating baseline/LRT rounds (best round kept).
        decode_modes: decoders to time (`DECODE_MODES`; "graph" and "compiled_graph" need
            CUDA). Rows are keyed "batch_B" for eager and "MODE/batch_B" for the others.
        interleave: time all training runs round-robin in one process (robust to load on shared
            CPUs, no memory figures); None -> on CPU only. Otherwise one model at a time.

    Returns:
        JSON-able dict: device, config, train (per run: step_ms, rel_step_time, tokens_per_s,
        flops_per_token, rel_flops, [mfu, peak_mem_gb]), decode (per batch size: baseline and
        lrt tokens/s, lrt_rel), errors (what failed, with the reason).
    """
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if dev.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    dims = dict(
        vocab_size=vocab_size,
        depth=depth,
        seq_len=seq_len,
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=n_kv_head,
        window_pattern=window_pattern,
        use_value_embeds=use_value_embeds,
        use_resid_lambdas=use_resid_lambdas,
        use_x0_residual=use_x0_residual,
    )
    base_cfg = LRTConfig(**dims)
    lrt_cfg = LRTConfig(pathway=pathway, **dims)
    sts = [parse_strategy(s) for s in strategies]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": {
            **base_cfg.to_dict(),
            "pathway": pathway,
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
            "compile": compile,
            "decode_tokens": decode_tokens,
            "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
        },
        "params": {},
        "train": {},
        "decode": {},
        "errors": {},
    }
    try:
        for name, cfg in (("baseline", base_cfg), ("lrt", lrt_cfg)):
            result["params"][name] = accounting.param_counts(cfg)["total"]
    except Exception as exc:  # noqa: BLE001 - the model may not be importable yet
        result["errors"]["params"] = describe_error(exc)
    kw = dict(steps=steps, warmup=warmup, batch_size=batch_size, compile_model=compile)

    runs = [("baseline", base_cfg, StrategyConfig())] + [(label(s), lrt_cfg, s) for s in sts]
    if interleave is None:
        interleave = dev.type != "cuda"
    if interleave:
        result["train"] = time_train_interleaved(runs, dev, errors=result["errors"], **kw)
    else:
        # One model at a time (clean peak memory); the baseline first and last, their mean is
        # the reference (drift).
        for name, cfg, st in [*runs, ("baseline_again", base_cfg, StrategyConfig())]:
            try:
                result["train"][name] = time_train(cfg, st, dev, **kw)
            except Exception as exc:  # noqa: BLE001 - record and go on with the other runs
                result["errors"][f"train/{name}"] = describe_error(exc)
    result["config"]["interleaved_timing"] = interleave
    train = result["train"]
    refs = [train[k] for k in ("baseline", "baseline_again") if k in train]
    if refs:
        ref_ms = statistics.mean(r["step_ms"] for r in refs)
        ref_flops = refs[0]["flops_per_token"]
        for r in train.values():
            r["rel_step_time"] = r["step_ms"] / ref_ms
            r["rel_flops"] = r["flops_per_token"] / ref_flops

    for mode in decode_modes:
        for b in decode_batches:
            key = f"batch_{b}" if mode == "eager" else f"{mode}/batch_{b}"
            row: dict[str, Any] = {}
            # Alternate baseline / LRT and keep each one's best round: decoding at small sizes
            # is short and noisy, and alternation spreads machine-load drift over both.
            for _ in range(decode_rounds):
                for name, cfg in (("baseline", base_cfg), ("lrt", lrt_cfg)):
                    try:
                        r = time_decode(cfg, dev, batch_size=b, tokens=decode_tokens, mode=mode)
                    except Exception as exc:  # noqa: BLE001
                        result["errors"][f"decode/{name}/{key}"] = describe_error(exc)
                        continue
                    if name not in row or r["tokens_per_s"] > row[name]["tokens_per_s"]:
                        row[name] = r
            if "baseline" in row and "lrt" in row:
                rel = row["lrt"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
                row["lrt_rel_throughput"] = rel
            result["decode"][key] = row
    if verbose:
        print(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of `run`'s result."""
    lines = [
        f"device: {result['device']}  torch {result['torch']}  config: "
        f"depth={result['config']['depth']} n_embd={result['config']['n_embd']} "
        f"vocab={result['config']['vocab_size']} T={result['config']['seq_len']} "
        f"B={result['config']['batch_size']} {result['config']['dtype']}"
    ]
    cuda = any("mfu" in r for r in result["train"].values())
    head = f"{'run':<16}{'step ms':>10}{'x base':>8}{'FLOPs x':>9}{'tok/s':>11}"
    head += f"{'MFU':>7}{'mem GB':>8}" if cuda else ""
    lines += ["", head]
    for name, r in result["train"].items():
        line = (
            f"{name:<16}{r['step_ms']:>10.2f}{r.get('rel_step_time', float('nan')):>8.2f}"
            f"{r.get('rel_flops', float('nan')):>9.3f}{r['tokens_per_s']:>11.0f}"
        )
        if cuda:
            line += f"{100 * r['mfu']:>6.1f}%{r['peak_mem_gb']:>8.2f}"
        lines.append(line)
    lines += ["", f"{'decode':<24}{'base tok/s':>12}{'LRT tok/s':>12}{'LRT/base':>10}"]
    for key, row in result["decode"].items():
        if "lrt_rel_throughput" in row:
            lines.append(
                f"{key:<24}{row['baseline']['tokens_per_s']:>12.1f}"
                f"{row['lrt']['tokens_per_s']:>12.1f}{row['lrt_rel_throughput']:>10.3f}"
            )
    for key, err in result["errors"].items():
        lines.append(f"ERROR {key}: {err}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=None)
    p.add_argument("--n-head", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES))
    p.add_argument("--n-kv-head", type=int, default=None, help="GQA: key/value heads")
    p.add_argument("--window-pattern", default=None, help="e.g. SSSL (default) or L")
    p.add_argument("--value-embeds", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--lambdas",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="resid_lambdas and x0_lambdas (the x0 skip)",
    )
    p.add_argument(
        "--features-off",
        action="store_true",
        help="no nanochat features: window L, no value embeddings, no lambdas (the flags above "
        "still override one at a time)",
    )
    p.add_argument("--pathway", default="shared", choices=["shared", "layerwise", "official"])
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="round-robin timing of all runs (default: on CPU only)",
    )
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--decode-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--decode-rounds", type=int, default=3)
    p.add_argument("--decode-modes", nargs="+", default=["eager"], choices=DECODE_MODES)
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    a = p.parse_args(argv)
    on = not a.features_off
    lambdas = on if a.lambdas is None else a.lambdas
    result = run(
        depth=a.depth,
        strategies=a.strategies,
        device=a.device,
        steps=a.steps,
        batch_size=a.batch_size,
        seq_len=a.seq_len,
        compile=a.compile,
        vocab_size=a.vocab_size,
        n_embd=a.n_embd,
        n_head=a.n_head,
        n_kv_head=a.n_kv_head,
        window_pattern=a.window_pattern or ("SSSL" if on else "L"),
        use_value_embeds=on if a.value_embeds is None else a.value_embeds,
        use_resid_lambdas=lambdas,
        use_x0_residual=lambdas,
        pathway=a.pathway,
        warmup=a.warmup,
        decode_tokens=a.decode_tokens,
        decode_batches=a.decode_batches,
        decode_rounds=a.decode_rounds,
        decode_modes=a.decode_modes,
        interleave=a.interleave,
    )
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(a.out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(a.out)
    return result


if __name__ == "__main__":
    main()
