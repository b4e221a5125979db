"""Decoding with a KV cache plus one memory vector per sequence.

An LRT decodes like a plain transformer: one forward per token, K/V appended to a cache of the
usual shape. The only extra state is the memory m (B, 1, C): the source-layer state of the
previous token, fed to the next one. Exact prefill is therefore token by token; the optional
approximate prefill runs interleaved passes over the prompt instead (fast, not exact).

    >>> from lrt import LRT, LRTConfig
    >>> model = LRT(LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2,
    ...                       pathway="layerwise")); model.init_weights()
    >>> out = generate(model, [[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    >>> out.shape
    torch.Size([1, 7])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lrt.attention import attention_mask, window_needed
from lrt.backbone import KV
from lrt.backbone import Backbone as LRT  # every decoder runs on the backbone's passes
from lrt.passes import merged_hidden, run_interleaved
from lrt.static_decode import StaticDecoder

# ---------------------------------------------------------------------------------------------
# State


class KVCache:
    """Per-layer K/V (B, Hkv, max_len, D), allocated on first write with the K/V dtype."""

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.n_layer = n_layer
        self.max_len = max_len
        self.pos = 0
        self.k: list[Tensor | None] = [None] * n_layer
        self.v: list[Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: Tensor, v: Tensor) -> KV:
        """Write k, v (B, H, T, D) at rows pos..pos+T; return the cache up to pos+T."""
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full ({self.pos + t} > {self.max_len})")
        if self.k[layer] is None:
            b, h, _, d = k.shape
            self.k[layer] = k.new_zeros(b, h, self.max_len, d)
            self.v[layer] = v.new_zeros(b, h, self.max_len, d)
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, self.pos : self.pos + t] = k
        vc[:, :, self.pos : self.pos + t] = v
        return kc[:, :, : self.pos + t], vc[:, :, : self.pos + t]

    def pass_context(
        self, cos: Tensor, sin: Tensor, t: int, rope_len: int, windows: list[int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[int, object]]:
        """Rotary rows, query positions and per-window masks of a pass that appends t tokens
        at `pos` (`windows`: the model's per-layer window sizes).

        One token needs no mask (every cached key is in its past) unless its layer's window
        excludes early keys; several tokens attend causally by position pos + row.
        """
        p0 = self.pos
        if p0 + t > rope_len:
            raise ValueError(f"decoding past the rotary table ({p0 + t} > {rope_len})")
        tk = p0 + t
        masks: dict[int, object] = dict.fromkeys(windows or [])
        q_pos = None
        if t > 1 or any(window_needed(w, tk) for w in masks):
            q_pos = p0 + torch.arange(t, device=cos.device)
            for w in masks:
                if t > 1 or window_needed(w, tk):
                    masks[w] = attention_mask(q_pos, t, tk, cos.device, ("cache", p0, t), w)
        return cos[p0:tk], sin[p0:tk], q_pos, masks

    def advance(self, t: int) -> None:
        self.pos += t


@dataclass
class DecodeState:
    """Cache + memory of a batch of sequences being decoded in lockstep."""

    cache: KVCache
    memory: Tensor  # (B, 1, C): source state of the last token fed (zeros before the first)


def new_state(model: LRT, batch_size: int, max_len: int) -> DecodeState:
    cfg = model.config
    memory = torch.zeros(
        batch_size, 1, cfg.n_embd, device=model.device, dtype=model.wte.weight.dtype
    )
    return DecodeState(KVCache(cfg.n_layer, max_len), memory)


@torch.no_grad()
def decode_step(model: LRT, state: DecodeState, tokens: Tensor) -> Tensor:
    """Feed one token per sequence (B,) or (B, 1); return next-token logits (B, V)."""
    out = model(tokens.view(-1, 1), state.memory, cache=state.cache)
    state.memory = out.source[:, -1:]
    return model.head(out.hidden)[:, -1]


def _static_decoder(model: LRT, batch_size: int, max_len: int):
    """A `StaticDecoder` that decodes under the caller's autocast dtype (none if autocast is
    off), so static and eager decoding compute in the same precision."""
    dev = model.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    return StaticDecoder(model, batch_size, max_len, autocast_dtype=amp)


# ---------------------------------------------------------------------------------------------
# Prefill and exact forward


@torch.no_grad()
def prefill(
    model: LRT, state: DecodeState, prompt: Tensor, approximate: bool = False, subsets: int = 2
) -> Tensor:
    """Feed prompt (B, T0) into a fresh state; return logits after its last token (B, V).

    Exact (default): token by token (one parallel pass for a baseline model, which has no
    recurrence). approximate=True: one interleaved run (init pass + `subsets`
    subset passes) fills the cache and memory in S+1 parallel passes; cache rows and memory then
    differ from exact decoding wherever the interleaved approximation does (exact only when
    subsets >= T0).
    """
    if state.cache.pos != 0:
        raise ValueError("prefill needs a fresh DecodeState")
    if not model.config.has_pathway:  # no recurrence: one parallel pass is exact
        out = model(prompt, cache=state.cache)
        state.memory = out.source[:, -1:]
        return model.head(out.hidden[:, -1:])[:, -1]
    if not approximate:
        logits = None
        for i in range(prompt.size(1)):
            logits = decode_step(model, state, prompt[:, i])
        return logits
    if subsets < prompt.size(1):
        warnings.warn(
            f"approximate prefill: interleaved with S={subsets} < prompt length "
            f"{prompt.size(1)}; the cache and memory are not those of exact decoding",
            stacklevel=2,
        )
    run = run_interleaved(model, prompt, subsets)
    t0 = prompt.size(1)
    for i, (k, v) in enumerate(run.buffer):
        state.cache.update(i, k, v)
    state.cache.advance(t0)
    state.memory = run.source[:, -1:]
    return model.head(merged_hidden(run, t0)[:, -1:])[:, -1]


@torch.no_grad()
def sequential_forward(model: LRT, idx: Tensor) -> Tensor:
    """Exact recurrent logits (B, T, V): token by token, memory = previous source state.

    Batched over sequences; equals decoding each sequence on its own.
    """
    b, t = idx.shape
    state = new_state(model, b, t)
    return torch.stack([decode_step(model, state, idx[:, i]) for i in range(t)], dim=1)


@torch.no_grad()
def sequential_losses(model: LRT, idx: Tensor, targets: Tensor, *, static: bool = False) -> Tensor:
    """Exact recurrent per-position losses (B, T) in nats (0 where targets == -1), computed
    step by step so only (B, V) logits exist at a time.

    static=True steps a `lrt.static_decode.StaticDecoder` instead (one CUDA graph replay per
    position on CUDA), under the surrounding autocast dtype if autocast is on, so the numbers
    match the eager path up to kernel rounding.
    """
    b, t = idx.shape
    if static:
        step = _static_decoder(model, b, t).step
    else:
        state = new_state(model, b, t)

        def step(tokens: Tensor) -> Tensor:
            return decode_step(model, state, tokens)

    out = torch.empty(b, t, device=idx.device, dtype=torch.float32)
    for i in range(t):
        logits = step(idx[:, i])
        out[:, i] = F.cross_entropy(logits, targets[:, i], ignore_index=-1, reduction="none")
    return out


# ---------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def generate(
    model: LRT,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    *,
    approximate_prefill: bool = False,
    prefill_subsets: int = 2,
    static: bool = False,
) -> Tensor:
    """Sample continuations with exact recurrent decoding.

    Args:
        prompt_ids: one prompt (list of ids) or a batch of equal-length prompts ((B, T0)
            tensor or list of lists).
        max_new_tokens: tokens to sample per sequence.
        temperature: 0 = greedy (argmax); otherwise softmax(logits / temperature).
        top_k: keep only the k most likely tokens before sampling.
        seed: seeds a private generator (same seed, same samples); None uses the global RNG.
        approximate_prefill: fill the cache with interleaved passes instead of token by token
            (warns; see `prefill`).
        static: decode with `lrt.static_decode.StaticDecoder` (static-shape cache; replayed
            as a CUDA graph on CUDA). Same tokens as the default eager decoder; exact prefill
            only.

    Returns:
        (B, T0 + max_new_tokens) int64: prompts followed by the sampled tokens.
    """
    device = model.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.size(1) == 0:
        raise ValueError("generate needs a non-empty prompt (e.g. the BOS token)")
    b, t0 = prompt.shape
    gen = None
    if seed is not None and temperature > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        if static:
            if approximate_prefill:
                raise ValueError("static decoding prefills exactly; drop approximate_prefill")
            decoder = _static_decoder(model, b, t0 + max_new_tokens)
            logits = decoder.prefill(prompt)
            step_fn = decoder.step
        else:
            state = new_state(model, b, t0 + max_new_tokens)
            logits = prefill(model, state, prompt, approximate_prefill, prefill_subsets)

            def step_fn(tokens: Tensor) -> Tensor:
                return decode_step(model, state, tokens)

        out = [prompt]
        for step in range(max_new_tokens):
            nxt = _sample(logits, temperature, top_k, gen)  # (B,)
            out.append(nxt.unsqueeze(1))
            if step + 1 < max_new_tokens:
                logits = step_fn(nxt)
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)


def _sample(logits: Tensor, temperature: float, top_k: int | None, gen) -> Tensor:
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)
