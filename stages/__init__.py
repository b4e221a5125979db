"""DVC entry points, one per stage of dvc.yaml. Each runs `pipeline.steps.stage_main`:

    python -m stages.download | tokenize | report
    python -m stages.train VARIANT | python -m stages.eval VARIANT

Nothing imports this package; settings come from params.yaml (and LRT_* environment variables).
"""
