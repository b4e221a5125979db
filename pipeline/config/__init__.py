"""Configuration: `Settings` (pydantic-settings over params.yaml, `LRT_*` environment variables
and `--set` overrides) and its typed sections. Everything else in `pipeline/` reads its knobs
from here; this package imports nothing else from `pipeline/`.

    >>> from pipeline.config.settings import load_settings
    >>> load_settings().train.seq_len                                 # doctest: +SKIP
"""
