"""`python -m pipeline.benchmarks.gpu`: see `pipeline.benchmarks.gpu.parent.main`."""

from pipeline.benchmarks.gpu.parent import main

main()
