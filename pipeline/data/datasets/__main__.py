"""Shards and download time of the paper's d20 run (docs/DATA.md, the README quotes it).

python -m pipeline.data.datasets                           # fineweb-edu, 100 MB/s and 1 GB/s
python -m pipeline.data.datasets --dataset climbmix --bandwidth-mbs 50 500
"""

from __future__ import annotations

import argparse
import sys

from pipeline.data.datasets.planning import format_bytes, format_duration, paper_d20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fineweb-edu")
    parser.add_argument("--bandwidth-mbs", type=float, nargs="+", default=[100.0, 1000.0])
    args = parser.parse_args(argv)
    r = paper_d20([b * 1e6 for b in args.bandwidth_mbs], args.dataset)
    print(
        f"paper d20 ({r['variant']}: {r['scaling_params'] / 1e6:.1f}M scaling params x 10 "
        f"tokens/param = {r['tokens'] / 1e9:.2f}B tokens x {r['bytes_per_token']} bytes/token) "
        f"on {r['dataset']}: {r['train_shards']} training shards + 1 validation = "
        f"{r['shards']} shards, about {format_bytes(r['bytes'])}"
    )
    for bandwidth, seconds in r["seconds"].items():
        print(f"  at {bandwidth / 1e6:g} MB/s: {format_duration(seconds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
