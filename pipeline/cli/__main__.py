"""`python -m pipeline.cli ...` (and `torchrun -m pipeline.cli train ...`, which
`pipeline.train.launch.maybe_relaunch` starts): the same program as `lrt-pipeline`."""

import sys

from pipeline.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
