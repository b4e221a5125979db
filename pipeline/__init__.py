"""LRT pipeline: settings, data sources, Rust-backed tokenizer/shards/loader, training, evaluation,
report, MLflow tracking and the `lrt-pipeline` CLI.

Submodules are imported on demand (`from pipeline.config.settings import load_settings`) so that the CLI
starts without importing torch.
"""

__version__ = "0.1.0"
