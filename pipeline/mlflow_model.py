"""A trained variant as an MLflow pyfunc model that generates text (model.pt + its tokenizer).

`log_generator` logs it under the active run's `model/` artifact path, so the UI lists a logged
model for the run and, from the project's venv,

    mlflow models serve -m models:/<model_id> --env-manager local -p 5001   # id: the run's
                                                                        # Logged models
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"prompt": "def main():"}]}'

continues each prompt (greedy by default; columns `max_new_tokens`, `temperature`, `seed` are
optional). The model is pickled by reference to `LRTGenerator`, so loading needs this package
importable (`--env-manager local` in the project venv); no pip environment is inferred, which
keeps logging to about a second.

    >>> from pipeline.mlflow_model import log_generator
    >>> log_generator("runs/lrt/model.pt", "data/tokens/tokenizer.bpe")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACT_PATH = "model"

try:  # mlflow is a pipeline dependency, but keep this module importable without it
    from mlflow.pyfunc import PythonModel as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[assignment,misc]


class LRTGenerator(_Base):  # type: ignore[misc,valid-type]
    """pyfunc: a DataFrame (or list of dicts) with a `prompt` column -> one completion each."""

    def load_context(self, context: Any) -> None:
        from pipeline.data.tokenizer import Tokenizer
        from pipeline.train.checkpoint import load_model

        self.model, _, _ = load_model(context.artifacts["model"], allow_mismatch=True)
        self.tokenizer = Tokenizer.load(context.artifacts["tokenizer"])

    def predict(self, context: Any, model_input: Any, params: Any = None) -> list[str]:
        from pipeline.evaluation.samples import generate_samples

        records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else model_input
        if isinstance(records, dict):
            records = [records]
        out = []
        for rec in records:
            rec = rec if isinstance(rec, dict) else {"prompt": str(rec)}
            [sample] = generate_samples(
                self.model,
                self.tokenizer,
                [str(rec["prompt"])],
                max_new_tokens=int(rec.get("max_new_tokens") or 32),
                temperature=float(rec.get("temperature") or 0.0),
                seed=int(rec.get("seed") or 0),
            )
            out.append(sample["completion"])
        return out


def log_generator(model_path: str | Path, tokenizer_path: str | Path) -> str | None:
    """Log `model_path` + `tokenizer_path` as a pyfunc `LRTGenerator` to the active run.

    Returns:
        The model URI (`models:/<model_id>`, MLflow 3's logged model linked to the run), or
        None without an active run.
    """
    from pipeline import tracking

    run_id = tracking.active_run_id()
    if run_id is None:
        return None
    import logging
    import warnings

    import mlflow.pyfunc

    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "CloudPickle" notice: this class is pickled by reference
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # type-hint signature inference chatter
            info = _log(mlflow, model_path, tokenizer_path)
    finally:
        quiet.setLevel(level)
    return str(info.model_uri)


def _log(mlflow: Any, model_path: str | Path, tokenizer_path: str | Path) -> Any:
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_PATH,
        python_model=LRTGenerator(),
        artifacts={"model": str(model_path), "tokenizer": str(tokenizer_path)},
        pip_requirements=[],  # served with --env-manager local (see the module docstring)
    )
