"""`python -m pipeline.study ...` (the `lrt-pipeline study` group before it is registered)."""

from pipeline.study.cli import study

if __name__ == "__main__":
    study(prog_name="python -m pipeline.study")
