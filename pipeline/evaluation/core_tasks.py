"""CORE's tasks and prompts (DCLM's in-context-learning suite, as nanochat renders it).

The task table (`TaskSpec`, `DEFAULT_TASKS`, `task_from_dict`), the bundle layouts `load_tasks`
reads, a task's items (`load_items`), and each item's prompts and scored token spans
(`render_prompts`, `encode_item`, `fewshot_indices`). `pipeline.evaluation.core` scores them.

Three task types, each item rendered as one or more `<|bos|> prompt` sequences:

- `multiple_choice` (`query`, `choices`, `gold`): one prompt per choice that differs only in the
  continuation; the scored span is the continuation tokens (those after the options' common
  token prefix).
- `schema` (`context_options`, `continuation`, `gold`): one prompt per context option with the
  same continuation; the scored span is the shared continuation (the options' common token
  suffix).
- `language_modeling` (`context`, `continuation`): one prompt; the scored span is the
  continuation.

Few-shot examples are other items of the same file, drawn per item with `random.Random(seed +
index)` and joined to the prompt with a blank line.

Example:
    >>> tasks = load_tasks("../shared/data/core")            # doctest: +SKIP
    >>> items = load_items(tasks[0])                         # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

TaskType = Literal["multiple_choice", "schema", "language_modeling"]
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")

SHUFFLE_SEED = 1337  # nanochat shuffles each file once, so `max_items` takes a fair sample
FEWSHOT_SEED = 1234  # per-item few-shot draw: random.Random(FEWSHOT_SEED + item index)


# -----------------------------------------------------------------------------
# Task table


@dataclass(frozen=True)
class TaskSpec:
    """One CORE task.

    Attributes:
        name: Label in metrics (CORE's label, e.g. "winograd").
        file: Path of the JSONL file (absolute, or relative to the bundle folder).
        type: "multiple_choice", "schema" or "language_modeling".
        shots: Number of few-shot examples per prompt.
        random_baseline: Accuracy of random guessing, in percent (as eval_meta_data.csv).
        delimiter: Text between context and continuation.
    """

    name: str
    file: str
    type: TaskType
    shots: int = 0
    random_baseline: float = 0.0
    delimiter: str = " "

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(
                f"task {self.name!r}: type must be one of {TASK_TYPES}, got {self.type!r}"
            )
        if self.shots < 0 or not 0.0 <= self.random_baseline < 100.0:
            raise ValueError(
                f"task {self.name!r}: bad shots={self.shots} or random_baseline={self.random_baseline}"
            )


# The subset of CORE shipped in ../shared/data/core (see its README for the authoritative table).
DEFAULT_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("copa", "copa.jsonl", "multiple_choice", 0, 50.0, " "),
    TaskSpec("piqa", "piqa.jsonl", "multiple_choice", 10, 50.0, "\nAnswer: "),
    TaskSpec("arc_easy", "arc_easy.jsonl", "multiple_choice", 10, 25.0, "\nAnswer: "),
    TaskSpec("winograd", "winograd_wsc.jsonl", "schema", 0, 50.0, " "),
    TaskSpec("lambada_openai", "lambada_openai_small.jsonl", "language_modeling", 0, 0.0, " "),
    TaskSpec("jeopardy", "jeopardy_small.jsonl", "language_modeling", 10, 0.0, "\nAnswer: "),
    TaskSpec("bigbench_operators", "bigbench_operators.jsonl", "language_modeling", 10, 0.0, " "),
    TaskSpec(
        "bigbench_repeat_copy_logic",
        "bigbench_repeat_copy_logic.jsonl",
        "language_modeling",
        10,
        0.0,
        " ",
    ),
    TaskSpec(
        "bigbench_dyck_languages",
        "bigbench_dyck_languages.jsonl",
        "language_modeling",
        10,
        0.0,
        " ",
    ),
)


def task_from_dict(d: Mapping[str, Any]) -> TaskSpec:
    """Build a `TaskSpec` from a user mapping (project keys or nanochat/llm-foundry keys).

    Accepts `name|label`, `file|dataset_uri`, `type|icl_task_type`, `shots|num_fewshot` (an int
    or a list, first element used), `random_baseline`, `delimiter|continuation_delimiter`.
    """
    shots = d.get("shots", d.get("num_fewshot", 0))
    if isinstance(shots, list | tuple):
        shots = shots[0] if shots else 0
    name = d.get("name", d.get("label"))
    file = d.get("file", d.get("dataset_uri"))
    if name is None or file is None:
        raise ValueError(
            f"CORE task entry {dict(d)} needs a name (or label) and a file (or dataset_uri)"
        )
    return TaskSpec(
        name=str(name),
        file=str(file),
        type=d.get("type", d.get("icl_task_type", "multiple_choice")),
        shots=int(shots),
        random_baseline=float(d.get("random_baseline", 0.0)),
        delimiter=str(d.get("delimiter", d.get("continuation_delimiter", " "))),
    )


def load_tasks(
    folder: str | Path, extra: Iterable[Mapping[str, Any] | TaskSpec] = ()
) -> list[TaskSpec]:
    """Task table for a bundle folder, with file paths resolved and missing files dropped.

    Layouts, checked in this order:

    1. nanochat's eval_bundle: `core.yaml` (`icl_tasks`: label, icl_task_type, dataset_uri,
       num_fewshot, continuation_delimiter), `eval_meta_data.csv` (`Eval Task`, `Random
       baseline` in percent) and the files under `eval_data/`.
    2. a flat folder with `core_tasks.yaml`: a list of task mappings (see `task_from_dict`).
    3. a flat folder of JSONL files: `DEFAULT_TASKS`, keeping those whose file is present.

    `extra` entries (e.g. the `eval.core_tasks` setting) are added last; one with the same name
    replaces the bundle's. Their relative files resolve against the folder too.
    """
    import yaml

    root = Path(folder)
    tasks: dict[str, TaskSpec] = {}
    if (root / "core.yaml").is_file():
        config = yaml.safe_load((root / "core.yaml").read_text(encoding="utf-8")) or {}
        baselines: dict[str, float] = {}
        meta = root / "eval_meta_data.csv"
        if meta.is_file():
            with meta.open(encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    baselines[row["Eval Task"]] = float(row["Random baseline"])
        for entry in config.get("icl_tasks", []):
            spec = task_from_dict(entry)
            rb = baselines.get(spec.name, entry.get("random_baseline", 0.0))
            tasks[spec.name] = replace(
                spec, file=str(root / "eval_data" / spec.file), random_baseline=float(rb)
            )
    elif (root / "core_tasks.yaml").is_file():
        entries = yaml.safe_load((root / "core_tasks.yaml").read_text(encoding="utf-8")) or []
        if isinstance(entries, Mapping):
            entries = entries.get("tasks", [])
        for entry in entries:
            spec = task_from_dict(entry)
            tasks[spec.name] = replace(spec, file=str(root / spec.file))
    else:
        for spec in DEFAULT_TASKS:
            tasks[spec.name] = replace(spec, file=str(root / spec.file))
    for entry in extra:
        spec = entry if isinstance(entry, TaskSpec) else task_from_dict(entry)
        path = Path(spec.file)
        tasks[spec.name] = replace(spec, file=str(path if path.is_absolute() else root / path))
    return [t for t in tasks.values() if Path(t.file).is_file()]


def load_items(spec: TaskSpec, *, shuffle_seed: int | None = SHUFFLE_SEED) -> list[dict[str, Any]]:
    """Items of a task's JSONL file, shuffled once with `shuffle_seed` (None keeps file order)."""
    with open(spec.file, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)
    return items


# -----------------------------------------------------------------------------
# Prompt rendering (the rules of DCLM / nanochat, written out with plain strings)


def _fewshot_block(lines: list[str]) -> str:
    return "".join(line + "\n\n" for line in lines)


def render_prompts(
    item: Mapping[str, Any], spec: TaskSpec, fewshot: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """Full prompt texts of one item (no BOS).

    multiple_choice: one per choice. schema: one per context option. language_modeling: two,
    the prompt without and with the continuation.
    """
    d = spec.delimiter
    if spec.type == "multiple_choice":
        shots = [f"{ex['query']}{d}{ex['choices'][ex['gold']]}" for ex in fewshot]
        head = _fewshot_block(shots) + f"{item['query']}{d}"
        return [head + str(choice) for choice in item["choices"]]
    if spec.type == "schema":
        shots = [f"{ex['context_options'][ex['gold']]}{d}{ex['continuation']}" for ex in fewshot]
        head = _fewshot_block(shots)
        return [head + f"{ctx}{d}{item['continuation']}" for ctx in item["context_options"]]
    # language_modeling: contexts are trimmed (some files carry trailing whitespace); the prompt
    # without the continuation is stripped so it stays a clean token prefix of the full one.
    shots = [f"{ex['context'].strip()}{d}{ex['continuation']}" for ex in fewshot]
    head = _fewshot_block(shots) + f"{item['context'].strip()}{d}"
    return [head.strip(), head + str(item["continuation"])]


def common_length(seqs: Sequence[Sequence[int]], *, suffix: bool = False) -> int:
    """Length of the common token prefix (or suffix) of all sequences."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if suffix else i
        if any(s[j] != seqs[0][j] for s in seqs[1:]):
            return i
    return n


@dataclass(frozen=True)
class Scored:
    """One token sequence to score; targets are `tokens[start:end]`."""

    item: int
    option: int
    tokens: tuple[int, ...]
    start: int
    end: int


def encode_item(
    item: Mapping[str, Any],
    spec: TaskSpec,
    fewshot: Sequence[Mapping[str, Any]],
    encode: Callable[[str], list[int]],
    bos_id: int,
    *,
    index: int = 0,
    max_len: int | None = None,
) -> list[Scored]:
    """Token sequences (with BOS) and scored spans of one item, left-truncated to `max_len`."""
    prompts = render_prompts(item, spec, fewshot)
    toks = [[bos_id, *encode(p)] for p in prompts]
    if spec.type == "multiple_choice":
        start = common_length(toks)
        spans = [(t, start, len(t)) for t in toks]
    elif spec.type == "schema":
        n = common_length(toks, suffix=True)
        spans = [(t, len(t) - n, len(t)) for t in toks]
    else:
        without, with_ = toks
        # Normally `without` is a token prefix of `with_`; when a tokenizer merges across the
        # boundary, the continuation starts where the two first differ.
        spans = [(with_, min(len(without), common_length(toks)), len(with_))]
    out = []
    for option, (t, s, e) in enumerate(spans):
        s = max(s, 1)  # position 0 (BOS) is never a target; an empty span scores NaN
        if max_len is not None and len(t) > max_len:
            crop = len(t) - max_len
            t, s, e = t[crop:], max(s - crop, 1), e - crop
        out.append(Scored(index, option, tuple(t), s, e))
    return out


def fewshot_indices(index: int, n_items: int, shots: int, seed: int = FEWSHOT_SEED) -> list[int]:
    """Few-shot item indices for item `index`: `shots` others, drawn with `Random(seed + index)`."""
    if shots <= 0:
        return []
    pool = [i for i in range(n_items) if i != index]
    return random.Random(seed + index).sample(pool, min(shots, len(pool)))
