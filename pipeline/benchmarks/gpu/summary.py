"""The parent's summary of results.json: the text table (`summarize`, written to summary.txt)
and the loader's share of a training step (`loader_share`)."""

from __future__ import annotations

from typing import Any


def summarize(res: dict[str, Any]) -> str:
    s = res["sections"]
    lines = [f"device: {s.get('env', {}).get('env', {}).get('device', '?')}  "
             f"budget {res['budget_s']} s, used {res.get('elapsed_s', '?')} s"]  # fmt: skip

    def g(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    for sec in ("train_eager", "train_compiled"):
        runs = {k[4:]: v for k, v in s.get(sec, {}).items() if k.startswith("run/")}
        if not runs:
            continue
        ref = runs.get("baseline", {}).get("step_ms")
        lines.append(
            f"\n{sec}: {'run':<28}{'step ms':>9}{'x base':>8}{'MFU%':>7}{'mem GB':>8}{'opt ms':>8}"
        )
        for k, v in runs.items():
            if "error" in v:
                lines.append(f"  {k:<36} ERROR {v['error'][:80]}")
                continue
            rel = v["step_ms"] / ref if ref else float("nan")
            lines.append(
                f"  {k:<36}{v['step_ms']:>9.1f}{rel:>8.2f}{100 * v.get('mfu', 0):>7.1f}"
                f"{(v.get('peak_mem_gb') or 0):>8.2f}{v.get('optimizer_ms', float('nan')):>8.1f}"
            )
    peak = g(s, "env", "env", "peak_flops_bf16_dense")
    if peak:
        lines.append(
            f"MFU against {peak / 1e12:.0f} TFLOP/s dense bf16 (lrt.accounting.PEAK_FLOPS)"
        )
    for k, v in s.get("decode", {}).items():
        if "lrt_rel_throughput" in v:
            line = (
                f"{k}: base {v['baseline']['tokens_per_s']:.0f} tok/s, LRT "
                f"{v['lrt']['tokens_per_s']:.0f} tok/s, overhead {v['lrt_overhead_pct']:.1f} %"
            )
            if "official_overhead_pct" in v:
                line += (
                    f"; official {v['official']['tokens_per_s']:.0f} tok/s, overhead "
                    f"{v['official_overhead_pct']:.1f} %"
                )
            lines.append(line)
        elif "error" in v:
            lines.append(f"{k}: ERROR {v['error'][:80]}")
    for k, v in s.get("loader", {}).items():
        if "next_ms_median" in v:
            lines.append(f"{k}: next {v['next_ms_median']:.3f} ms, h2d {v['h2d_ms_median']:.3f} ms")
    for k, v in res.get("loader_share", {}).items():
        lines.append(
            f"loader share {k}: loader {v['loader_pct']:.2f} %, h2d {v['h2d_pct']:.2f} % "
            f"of a {v['step_ms']:.1f} ms step"
        )
    qs = g(s, "quality", "summary")
    if qs:

        def fmt(v: Any) -> str:
            return "[" + ", ".join(fmt(x) for x in v) + "]" if isinstance(v, list) else f"{v:.4f}"

        lines.append("quality (val BPB): " + ", ".join(f"{k}={fmt(v)}" for k, v in qs.items()))
    pt = g(s, "pytest", "pytest")
    if pt:
        lines.append(f"pytest rc={pt.get('rc')}: {pt.get('tail', '').strip().splitlines()[-1:]}")
    for name, meta in res["meta"].items():
        lines.append(f"section {name}: {meta['status']} ({meta.get('wall_s', 0)} s)")
    return "\n".join(lines)


def loader_share(res: dict[str, Any]) -> dict[str, Any]:
    s = res["sections"]
    out = {}
    for sec in ("train_compiled", "train_eager"):
        step = s.get(sec, {}).get("run/baseline", {}).get("step_ms")
        if step:
            for mode in ("bestfit", "contiguous"):
                lo = s.get("loader", {}).get(f"loader/{mode}", {})
                if "next_ms_median" in lo:
                    out[f"{sec}/{mode}"] = {
                        "step_ms": step,
                        "loader_pct": 100 * lo["next_ms_median"] / step,
                        "h2d_pct": 100 * lo["h2d_ms_median"] / step,
                    }
    return out
