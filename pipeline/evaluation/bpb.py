"""Bits per byte (BPB) on validation shards, in every decoding mode a model supports.

BPB follows nanochat's definition: the summed cross-entropy (nats) of the target tokens divided by
`ln 2` times the total UTF-8 byte length of those targets. Special tokens (e.g. `<|bos|>`) have
length 0 and are masked out of the numerator as well, and targets equal to -1 are ignored, so BPB
does not depend on the vocabulary.

For an LRT model the same validation windows are scored in up to four modes (`bpb_modes`):

- `init`: one causal pass with zero memory (the baseline transformer's only mode);
- `merged`: the interleaved training estimate (S strided subsets; what training optimises);
- `refine`: the final pass of multi-refine (K Jacobi passes);
- `sequential`: exact token-by-token decoding with KV cache and memory (what a user gets).

`merged - sequential` is the train/test gap of the parallel training approximation.

Training's own periodic validation (`val_bpb` in `train_log.csv`) is
`pipeline.evaluation.periodic`; it shares `lrt_loss_fns` and `bits_per_byte` with this module.

Example:
    >>> import torch
    >>> meter = BPBMeter(torch.tensor([0, 1, 2]), seq_len=2, bucket_size=1)
    >>> meter.update(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 2]]))
    >>> round(meter.result().bpb, 4)   # 3 nats / (ln 2 * 3 bytes)
    1.4427
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`(idx, targets) -> (B, T)` per-token cross-entropy in nats (any value where targets == -1)."""

LRT_MODES = ("init", "merged", "refine", "sequential")
PROGRESS_EVERY_S = 30.0
"""Seconds between plain progress lines when there is no progress bar."""

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# Accumulation


def bits_per_byte(nats: float, nbytes: float) -> float:
    """`nats / (ln 2 * nbytes)`; NaN without bytes. The one BPB ratio of `pipeline/`
    (`BPBMeter` here, training's periodic check in `pipeline.evaluation.periodic`).

    >>> round(bits_per_byte(3.0, 3), 4), bits_per_byte(1.0, 0)
    (1.4427, nan)
    """
    return nats / (math.log(2) * nbytes) if nbytes > 0 else math.nan


@dataclass
class BPBResult:
    """BPB of one mode over all evaluated windows.

    Attributes:
        bpb: Summed nats / (ln 2 * summed bytes) over counted targets.
        nats: Summed nats of counted targets.
        bytes: Summed UTF-8 bytes of counted targets.
        tokens: Number of counted targets (non-special, not ignored).
        loss: Mean nats per counted target.
        bucket_size: Width of the window-position buckets.
        buckets: BPB per window-position bucket (`[i*bucket_size, (i+1)*bucket_size)`); NaN where
            a bucket has no counted bytes.
        position_loss: Mean nats per counted target at each window position (T values).
        doc_position_loss: Mean nats per token by the number of tokens of its own document the
            model had read before it (index 0 = the token right after `<|bos|>`): tokens since
            the latest `<|bos|>` in the window, or, when the document began before the window,
            since the window start (the model sees nothing earlier); NaN where no token was
            seen. Feeds the in-context-gain probe.
    """

    bpb: float
    nats: float
    bytes: int
    tokens: int
    loss: float
    bucket_size: int
    buckets: list[float] = field(default_factory=list)
    position_loss: list[float] = field(default_factory=list)
    doc_position_loss: list[float] = field(default_factory=list)


class BPBMeter:
    """Accumulates nats and bytes of (B, T) per-token losses, overall and per position.

    Args:
        token_bytes: (vocab_size,) UTF-8 byte length of every token id, 0 for special tokens
            (`Tokenizer.token_byte_lengths()`).
        seq_len: Window length T (sizes the per-position tables).
        bucket_size: Width of the window-position buckets.
        bos_id: Id of `<|bos|>`; when given, losses are also tracked by position inside the
            document (for the in-context-gain probe).
    """

    def __init__(
        self,
        token_bytes: torch.Tensor | Any,
        seq_len: int,
        *,
        bucket_size: int = 256,
        bos_id: int | None = None,
    ) -> None:
        self.token_bytes = torch.as_tensor(token_bytes, dtype=torch.int64).cpu()
        self.seq_len = seq_len
        self.bucket_size = max(1, int(bucket_size))
        self.bos_id = bos_id
        self.pos_nats = torch.zeros(seq_len, dtype=torch.float64)  # (T,)
        self.pos_bytes = torch.zeros(seq_len, dtype=torch.int64)  # (T,)
        self.pos_tokens = torch.zeros(seq_len, dtype=torch.int64)  # (T,)
        self.doc_nats = torch.zeros(seq_len, dtype=torch.float64)  # (T,)
        self.doc_tokens = torch.zeros(seq_len, dtype=torch.int64)  # (T,)

    def update(
        self, losses: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> None:
        """Add one batch. `losses` (B, T) nats, `targets` (B, T) ids (-1 = ignored), `inputs`
        (B, T) ids (only needed for document positions)."""
        losses = losses.detach().to("cpu", torch.float64)
        targets = targets.detach().to("cpu", torch.int64)
        B, T = targets.shape
        if self.seq_len < T:
            raise ValueError(
                f"batch has T={T} positions but the meter was built for {self.seq_len}"
            )
        valid = targets >= 0
        nbytes = torch.where(valid, self.token_bytes[targets.clamp(min=0)], 0)  # (B, T)
        counted = nbytes > 0
        # NaN/inf losses at ignored positions must not leak into the sums.
        nats = torch.where(counted, losses, torch.zeros_like(losses))  # (B, T)
        self.pos_nats[:T] += nats.sum(0)
        self.pos_bytes[:T] += nbytes.sum(0)
        self.pos_tokens[:T] += counted.sum(0)
        if inputs is not None and self.bos_id is not None:
            self._update_doc_positions(nats, counted, inputs.detach().to("cpu", torch.int64))

    def _update_doc_positions(
        self, nats: torch.Tensor, counted: torch.Tensor, inputs: torch.Tensor
    ) -> None:
        # Target t is predicted after reading inputs[:t+1]; its context position is the number of
        # tokens of its own document the model has read: t - (latest <|bos|> at or before t). A
        # document that began before the window counts from an implicit boundary at -1, since
        # the model sees nothing before the window. (Skipping such tokens instead, as "position
        # unknown", left the late positions empty for documents longer than a window, and the
        # in-context gain NaN.)
        B, T = inputs.shape
        t = torch.arange(T).expand(B, T)
        bos_at = torch.where(inputs == self.bos_id, t, torch.full_like(t, -1))
        last_bos = torch.cummax(bos_at, dim=1).values  # (B, T), -1 where no <|bos|> yet
        doc_pos = (t - last_bos).clamp(max=self.seq_len - 1)  # (B, T)
        self.doc_nats.index_add_(0, doc_pos[counted], nats[counted])
        self.doc_tokens.index_add_(0, doc_pos[counted], torch.ones_like(doc_pos[counted]))

    def result(self) -> BPBResult:
        """Totals and per-position tables so far."""
        nats = float(self.pos_nats.sum())
        nbytes = int(self.pos_bytes.sum())
        tokens = int(self.pos_tokens.sum())
        buckets = []
        for lo in range(0, self.seq_len, self.bucket_size):
            b = int(self.pos_bytes[lo : lo + self.bucket_size].sum())
            n = float(self.pos_nats[lo : lo + self.bucket_size].sum())
            buckets.append(bits_per_byte(n, b))
        pos = torch.where(
            self.pos_tokens > 0, self.pos_nats / self.pos_tokens.clamp(min=1), math.nan
        )
        doc = torch.where(
            self.doc_tokens > 0, self.doc_nats / self.doc_tokens.clamp(min=1), math.nan
        )
        return BPBResult(
            bpb=bits_per_byte(nats, nbytes),
            nats=nats,
            bytes=nbytes,
            tokens=tokens,
            loss=nats / tokens if tokens > 0 else math.nan,
            bucket_size=self.bucket_size,
            buckets=buckets,
            position_loss=pos.tolist(),
            doc_position_loss=doc.tolist(),
        )


# -----------------------------------------------------------------------------
# Evaluation loop


@dataclass
class BPBEvaluation:
    """What `evaluate_bpb` returns.

    Attributes:
        results: Mode -> BPB over every window that mode scored (modes may have different token
            caps, e.g. the slow sequential mode).
        common: Mode -> BPB over the windows that every mode scored; compare modes here.
        common_tokens: Target positions in the common windows.
    """

    results: dict[str, BPBResult]
    common: dict[str, BPBResult]
    common_tokens: int


@torch.no_grad()
def evaluate_bpb(
    loss_fns: Mapping[str, LossFn],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor | Any,
    *,
    seq_len: int,
    bucket_size: int = 256,
    max_tokens: int | None = None,
    mode_max_tokens: Mapping[str, int] | None = None,
    bos_id: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> BPBEvaluation:
    """Score validation windows under every mode in `loss_fns`.

    Every mode sees the same windows in the same order; a mode with a smaller cap in
    `mode_max_tokens` stops early, and `common` holds every mode over the windows all of them
    scored.

    Args:
        loss_fns: Mode name -> `(idx, targets) -> (B, T)` nats (see `lrt_loss_fns`).
        batches: (inputs, targets) pairs, e.g. a `pipeline.data.loader.DataLoader` over split "val"
            in contiguous mode without shuffling. Moved to `device` and cast to int64 here.
        token_bytes: (vocab_size,) byte length per token id, 0 for special tokens.
        seq_len: Window length T.
        bucket_size: Width of the per-position BPB buckets.
        max_tokens: Stop once this many target positions are scored, in whole windows (T
            targets each); None = all batches.
        mode_max_tokens: Lower caps for some modes (a mode takes the windows of a batch it still
            needs to reach its cap).
        bos_id: `<|bos|>` id, to also track loss by position inside documents.
        device: Where the model runs.
        progress: Show a tqdm progress bar.

    Example:
        >>> import torch
        >>> fns = {"init": lambda x, y: torch.ones(y.shape)}
        >>> batches = [(torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))]
        >>> evaluate_bpb(fns, batches, torch.tensor([0, 2, 2]), seq_len=2).results["init"].bytes
        4
    """

    def meter() -> BPBMeter:
        return BPBMeter(token_bytes, seq_len, bucket_size=bucket_size, bos_id=bos_id)

    caps = {
        m: min(max_tokens or math.inf, (mode_max_tokens or {}).get(m, math.inf)) for m in loss_fns
    }
    meters = {m: meter() for m in loss_fns}
    common = {m: meter() for m in loss_fns}
    seen = dict.fromkeys(loss_fns, 0)
    common_tokens = 0
    bar = None
    total = None if max_tokens is None else int(max_tokens)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="tok", desc="bpb " + "/".join(loss_fns), leave=False)
    started = last_line = time.perf_counter()
    scored = 0
    for inputs, targets in batches:
        active = [m for m in loss_fns if seen[m] < caps[m]]
        if not active:
            break
        x = inputs.to(device, non_blocking=True).long()
        y = targets.to(device, non_blocking=True).long()
        B, T = y.shape
        # Each mode takes the windows (rows) it still needs to cover its cap, so a batch larger
        # than the cap does not overshoot it; the common windows are the rows every mode took.
        rows = {m: B if math.isinf(caps[m]) else min(B, math.ceil((caps[m] - seen[m]) / T))
                for m in active}  # fmt: skip
        common_rows = min(rows.values()) if len(active) == len(loss_fns) else 0
        for m in active:
            r = rows[m]
            losses = loss_fns[m](x[:r], y[:r])
            meters[m].update(losses, y[:r], x[:r])
            if common_rows:
                n = common_rows
                common[m].update(losses[:n], y[:n], x[:n])
            seen[m] += r * T
        common_tokens += common_rows * T
        scored += max(rows.values()) * T
        if bar is not None:
            bar.update(y.numel())
        elif time.perf_counter() - last_line >= PROGRESS_EVERY_S:
            # No progress bar (not a terminal): a plain line now and then instead of tqdm frames.
            last_line = time.perf_counter()
            log.info(
                "bpb %s: %d/%s tokens, %.0f s",
                "/".join(active),
                scored,
                total if total is not None else "?",
                last_line - started,
            )
    if bar is not None:
        bar.close()
    return BPBEvaluation(
        results={m: r.result() for m, r in meters.items()},
        common={m: r.result() for m, r in common.items()},
        common_tokens=common_tokens,
    )


# -----------------------------------------------------------------------------
# LRT adapters


def supported_modes(model: Any) -> tuple[str, ...]:
    """BPB modes that differ for `model`: ("init",) for a baseline, all of `LRT_MODES` for an
    LRT (a model without a pathway gives the same losses in every mode)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "has_pathway", False):
        return LRT_MODES
    return ("init",)


def chunked(fn: LossFn, max_rows: int) -> LossFn:
    """`fn` applied to at most `max_rows` rows at a time (results concatenated): a large
    scoring batch for one mode does not raise the memory of another.

    >>> import torch
    >>> calls = []
    >>> f = chunked(lambda x, y: calls.append(len(x)) or torch.zeros(y.shape), 2)
    >>> f(torch.zeros(5, 3), torch.zeros(5, 3)).shape, calls
    (torch.Size([5, 3]), [2, 2, 1])
    """

    def run(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if idx.size(0) <= max_rows:
            return fn(idx, targets)
        parts = [
            fn(idx[lo : lo + max_rows], targets[lo : lo + max_rows])
            for lo in range(0, idx.size(0), max_rows)
        ]
        return torch.cat(parts, dim=0)

    return run


def lrt_loss_fns(
    model: Any,
    modes: Iterable[str] | None = None,
    strategy: Any = None,
    *,
    static: bool | None = None,
) -> dict[str, LossFn]:
    """Per-mode loss functions of an `lrt.LRT` model (`model.token_losses`).

    Args:
        model: An `lrt.LRT` in eval mode.
        modes: Modes of `model.token_losses` ("init", "merged", "refine", "chunked",
            "sequential"); None = `supported_modes(model)`.
        strategy: The `lrt.StrategyConfig` the model was trained with: it sets S of "merged",
            K of "refine" and C of "chunked". None = `StrategyConfig()` defaults.
        static: Score "sequential" with the static decoder (`lrt.decode.sequential_losses(
            static=True)`: one CUDA graph replay per position); default: on CUDA.
    """
    device = getattr(model, "device", None)
    use_static = (getattr(device, "type", None) == "cuda") if static is None else static

    def make(mode: str) -> LossFn:
        def fn(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if mode == "sequential" and use_static and model.config.has_pathway:
                from lrt.decode import sequential_losses

                return sequential_losses(model, idx, targets, static=True)
            return model.token_losses(idx, targets, mode=mode, strategy=strategy)

        return fn

    return {m: make(m) for m in (modes if modes is not None else supported_modes(model))}


def _bucket_labels(r: BPBResult) -> dict[str, float]:
    out = {}
    for i, v in enumerate(r.buckets):
        if not math.isnan(v):
            out[f"{i * r.bucket_size}-{(i + 1) * r.bucket_size - 1}"] = v
    return out


def bpb_metrics(ev: BPBEvaluation, *, alias_modes: Iterable[str] = ()) -> dict[str, Any]:
    """Metrics: `bpb.<mode>`, `val_bpb`, `val_loss`, `bpb_gap.<mode>`, `bpb_buckets.<mode>`.

    `val_bpb` is the decoding-time number: "sequential" when scored, else "init". `bpb_gap.<m>`
    = BPB of mode m minus sequential BPB over the common windows (`bpb_gap.merged` is the
    train/test gap of interleaved training; `bpb_gap.init` the gain from the memory).
    `alias_modes` are reported with the "init" value: for a model without a pathway every mode
    computes the same function (an identity `lrt` tests), so they are not recomputed.
    """
    results = dict(ev.results)
    for m in alias_modes:
        if m not in results and "init" in results:
            results[m] = results["init"]
    headline = results.get("sequential") or results.get("init") or next(iter(results.values()))
    out: dict[str, Any] = {
        "bpb": {m: r.bpb for m, r in results.items()},
        "val_bpb": headline.bpb,
        "val_loss": headline.loss,
        "val_tokens": headline.tokens,
    }
    if "sequential" in ev.common:
        seq = ev.common["sequential"].bpb
        out["bpb_gap"] = {m: r.bpb - seq for m, r in ev.common.items() if m != "sequential"}
    out["bpb_buckets"] = {m: _bucket_labels(r) for m, r in results.items()}
    return out
