"""The study's arms: model and training-strategy configs as plain dicts, checked against this build.

An arm is a named (model overrides, strategy) pair over one shared base config. Arms that need
`lrt.config.LRTConfig` fields this build lacks (e.g. the authors' `pathway="official"` before it
lands) are reported as "not available in this build" with the reason, never dropped silently;
the study gains them as soon as the fields exist.

    >>> arms = equivalence_arms()
    >>> [a.name for a in arms][:3]
    ['baseline', 'sequential', 'interleaved_s2']
    >>> check_arm(arms[0], {"vocab_size": 300, "depth": 1, "seq_len": 16, "n_embd": 64}) is None
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lrt.config import LRTConfig, StrategyConfig

OURS = "shared"
"""Our single-gate pathway (one memory K/V projection for every layer)."""


@dataclass(frozen=True)
class Arm:
    """One cell row of a study.

    Attributes:
        name: Short id (file names, tables).
        label: What it is, for tables.
        model: `LRTConfig` overrides on top of the study's base config.
        strategy: `StrategyConfig` fields.
        eval_mode: The mode that scores the training estimate ("merged", "refine", "chunked";
            "sequential" for exact training, "init" for the baseline). Its BPB minus the exact
            sequential BPB is the train/test gap.
        match_compute_of: Train this arm for the effective compute (`lrt.accounting`) of the
            named arm's tokens instead of the study's token budget.
    """

    name: str
    label: str
    model: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    eval_mode: str = "init"
    match_compute_of: str | None = None

    @property
    def has_pathway(self) -> bool:
        return self.model.get("pathway", "none") != "none"

    @property
    def recurrent(self) -> bool:
        """Has a pathway that carries memory (not the zero-memory ablation): only then do
        sequential decoding and the parallel strategies differ from one plain pass."""
        return self.has_pathway and not self.model.get("zero_memory", False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def equivalence_arms(chunk_size: int = 16) -> list[Arm]:
    """Same model (our shared pathway), same data and seeds, trained with every strategy."""
    lrt = {"pathway": OURS}
    arms = [
        Arm("baseline", "baseline transformer (no pathway)", {"pathway": "none"}, {"name": "none"}),
        Arm("sequential", "exact sequential unrolling (true BPTT)", lrt,
            {"name": "sequential"}, "sequential"),
        Arm("interleaved_s2", "interleaved S=2", lrt,
            {"name": "interleaved", "subsets": 2}, "merged"),
        Arm("interleaved_s4", "interleaved S=4", lrt,
            {"name": "interleaved", "subsets": 4}, "merged"),
    ]  # fmt: skip
    for k in (1, 2, 3):
        arms.append(
            Arm(f"multi_refine_k{k}", f"multi_refine K={k}", lrt,
                {"name": "multi_refine", "refine_steps": k}, "refine")
        )  # fmt: skip
    arms.append(
        Arm("chunked", f"chunked C={chunk_size}", lrt,
            {"name": "chunked", "chunk_size": chunk_size}, "chunked")
    )  # fmt: skip
    return arms


def attribution_arms() -> list[Arm]:
    """Where the authors' arm's gain comes from: capacity (value embeddings, gates) or memory.

    Every pathway arm trains with interleaved S=2 (the paper's default) except the
    zero-memory arm: with the memory forced to 0 every interleaved pass computes the init
    pass again, so its loss and gradient equal the plain pass's; it trains with one pass.
    """
    s2 = {"name": "interleaved", "subsets": 2}
    return [
        Arm("baseline", "baseline transformer (no pathway)", {"pathway": "none"}, {"name": "none"}),
        Arm("baseline_ve_all", "baseline + value embeddings on every layer",
            {"pathway": "none", "use_value_embeds": True, "ve_every_layer": True},
            {"name": "none"}),
        Arm("official_zero_memory", "authors' arm, memory forced to 0 (capacity only)",
            {"pathway": "official", "zero_memory": True}, {"name": "none"}, "init"),
        Arm("official", "authors' arm (triple gate, init value embeddings), S=2",
            {"pathway": "official"}, s2, "merged"),
        Arm("ours_shared", "our single-gate shared pathway, S=2", {"pathway": OURS}, s2,
            "merged"),
        Arm("baseline_matched", "baseline at the effective compute of ours_shared",
            {"pathway": "none"}, {"name": "none"}, "init", match_compute_of="ours_shared"),
    ]  # fmt: skip


ARM_SETS = {"equivalence": equivalence_arms, "attribution": attribution_arms}

COMPARISONS: dict[str, list[tuple[str, str]]] = {
    # (arm, reference): paired differences reported besides "each arm vs baseline"
    "equivalence": [
        ("interleaved_s2", "sequential"),
        ("interleaved_s4", "sequential"),
        ("multi_refine_k1", "sequential"),
        ("multi_refine_k2", "sequential"),
        ("multi_refine_k3", "sequential"),
        ("chunked", "sequential"),
    ],
    "attribution": [
        ("official", "baseline_ve_all"),
        ("official", "official_zero_memory"),
        ("official_zero_memory", "baseline"),
        ("ours_shared", "baseline_matched"),
        ("official", "baseline_matched"),
    ],
}


def model_config(arm: Arm, base: dict[str, Any]) -> LRTConfig:
    """The arm's `LRTConfig` (raises TypeError/ValueError when this build lacks a field)."""
    return LRTConfig(**{**base, **arm.model})


def strategy_config(arm: Arm) -> StrategyConfig:
    return StrategyConfig(**arm.strategy)


def check_arm(arm: Arm, base: dict[str, Any]) -> str | None:
    """None when this build can build the arm, else why not (one line)."""
    try:
        model_config(arm, base)
        strategy_config(arm)
    except (TypeError, ValueError) as exc:
        return f"not available in this build: {exc}"
    return None
