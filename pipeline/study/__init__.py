"""`lrt-pipeline study`: does interleaved training match true recurrence, and where does LRT's
gain come from? Small-scale experiments with seeds and paired intervals (issue 14).

    lrt-pipeline study equivalence            # every training strategy vs exact sequential BPTT
    lrt-pipeline study attribution            # capacity (value embeddings, gates) vs memory
    lrt-pipeline study all                    # both, sharing their common cells
    lrt-pipeline study equivalence --quick    # CI smoke test (< 2 minutes): structure only

Registered in `pipeline/cli/__init__.py`; `python -m pipeline.study ...` runs it too.
Modules: `arms` (the arms as config dicts), `data` (tokenizer + shards), `cell` (train, measure
and evaluate one arm/seed), `measure` (state and gradient gaps at fixed weights), `stats`
(paired t-intervals), `runner` (resumable cells, aggregation, MLflow), `render` (md/html/png).
"""

from __future__ import annotations

from pipeline.study.cli import study

__all__ = ["study"]
