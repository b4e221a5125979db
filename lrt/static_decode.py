"""Decoding with static shapes, so one decode step can be compiled and captured as a CUDA graph.

Eager decoding (`lrt.decode`) is bound by kernel launches and host time at small batch: on an
H100 a d12 step took 10.4 ms at batch 1, about 100x the time to read the weights once, and the
LRT's few extra small ops per layer cost 31 % (docs/RESULTS.md). A decode step whose every
tensor keeps its shape and address from one token to the next can instead be recorded once
and replayed as a single CUDA graph launch; only the work itself remains.

What is static here:
- `StaticKVCache`: per-layer K/V of shape (B, H, max_len, D), allocated (zeroed) up front. The
  write position is a device tensor `pos` (1,) advanced in place; a step writes row `pos` with
  `index_copy_` and attends to all max_len rows under the mask `key <= pos` (and
  `pos - key <= window` on sliding-window layers, one mask per distinct window). Rows past `pos`
  are masked out, so the result equals the growing cache of `lrt.decode.KVCache` (the step
  costs attention over max_len keys instead of pos + 1; keep max_len to what you decode).
- `StaticDecoder`: owns the cache, the memory (B, 1, C), the input tokens (B, 1) and the
  logits (B, V). `step(tokens)` copies the tokens in, runs the step (eager, `torch.compile`d,
  or a CUDA graph replay) and returns a copy of the logits.

The arithmetic is the model's own `forward` and `head` (the cache only supplies rotary rows,
mask and K/V storage), so the static decoder computes what `lrt.decode.decode_step` computes
(tests/test_static_decode.py checks it against the eager decoder and exact sequential logits).

    >>> from lrt import LRT, LRTConfig
    >>> model = LRT(LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2,
    ...                       pathway="shared")); model.init_weights()
    >>> dec = StaticDecoder(model, batch_size=2, max_len=8)
    >>> dec.step(torch.tensor([1, 2])).shape
    torch.Size([2, 97])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lrt.attention import window_needed
from lrt.backbone import KV
from lrt.backbone import Backbone as LRT


class StaticKVCache:
    """Fixed-size K/V per layer plus a device-side write position (see the module docstring).

    Args:
        n_layer, batch_size, n_head, head_dim, max_len: cache shape (B, H, max_len, D) per
            layer (H: the model's n_kv_head).
        device, dtype: where and in what dtype K/V are stored (the dtype of the model's K/V:
            its parameter dtype, or bf16 for a model run in bf16).
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        # Rows rounded up to a multiple of 16 (masked like any unwritten row): the attention
        # kernels want the key length (and so the mask's last dimension) 16-aligned.
        rows = -(-max_len // 16) * 16
        shape = (batch_size, n_head, rows, head_dim)
        # zeros, not empty: masked rows still enter the softmax-weighted sum with weight 0, and
        # 0 * NaN from uninitialised memory would poison the output
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # next row to write
        self.keys = torch.arange(rows, device=device)

    def pass_context(
        self, cos: Tensor, sin: Tensor, t: int, rope_len: int, windows: list[int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[int, Tensor]]:
        """Rotary rows at `pos`, q_pos = pos and per layer window the (1, rows) mask
        `key <= pos` (`& pos - key <= window` where the window can exclude a cached key).

        Only t == 1 (one token per step). Bounds (pos < max_len <= rope_len) are the caller's
        to check on the host (`StaticDecoder` counts steps): reading `pos` here would
        synchronise and could not be captured.
        """
        if t != 1:
            raise ValueError(f"a static cache decodes one token per step, got {t}")
        if self.max_len > rope_len:
            raise ValueError(f"max_len {self.max_len} exceeds the rotary table ({rope_len})")
        causal = self.keys <= self.pos
        masks: dict[int, Tensor] = {}
        for w in dict.fromkeys(windows or []):
            windowed = window_needed(w, self.max_len)
            m = causal & (self.pos - self.keys <= w) if windowed else causal
            masks[w] = m.unsqueeze(0)  # (Tq=1, Tk)
        return cos.index_select(0, self.pos), sin.index_select(0, self.pos), self.pos, masks

    def update(self, layer: int, k: Tensor, v: Tensor) -> KV:
        """Write k, v (B, H, 1, D) at row pos in place; return the whole (B, H, rows, D)."""
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(2, self.pos, k.to(kc.dtype))
        vc.index_copy_(2, self.pos, v.to(vc.dtype))
        return kc, vc

    def advance(self, t: int) -> None:
        self.pos.add_(t)

    def reset(self) -> None:
        """Back to an empty cache (old rows stay; they are masked until overwritten)."""
        self.pos.zero_()


class StaticDecoder:
    """One decode step with static shapes: eager, compiled and/or replayed as a CUDA graph.

    Args:
        model: the LRT (or baseline) in the dtype it should decode in (e.g. `model.bfloat16()`
            for bf16 decoding). A surrounding autocast region changes nothing: steps set their
            own (see `autocast_dtype`).
        batch_size: sequences decoded in lockstep.
        max_len: tokens per sequence, prompt included (at most the model's rotary length).
        compile_backend: None (no compile) or a `torch.compile` backend ("inductor" fuses the
            step's elementwise ops; "eager" only traces). The step must trace as one graph
            (fullgraph=True), so a graph break is an error, not a silent slowdown.
        cuda_graph: capture the step as a CUDA graph (default: when the model is on CUDA).
        fuse: project q, k, v and the pathway gate with one matmul per layer, and every
            layer's memory K/V with one matmul, from stacked weights
            (`LRT.fused_projection_weights`): fewer, larger kernels. The stack is a copy of the
            weights; `reset()` refreshes it if the model's weights changed since.
        autocast_dtype: None (default) runs steps in the model's dtype with autocast off (no
            weight casts per step); e.g. torch.bfloat16 runs them under autocast like mixed-
            precision training and evaluation do (cache in that dtype; the cast cache is
            off, so a captured graph casts the weights itself and holds no freed casts).

    `step(tokens)` feeds one token per sequence and returns next-token logits (B, V) float32;
    `prefill(prompt)` feeds a (B, T0) prompt exactly; `reset()` starts new sequences (reusing
    the captured graph).
    """

    def __init__(
        self,
        model: LRT,
        batch_size: int,
        max_len: int,
        *,
        compile_backend: str | None = None,
        cuda_graph: bool | None = None,
        fuse: bool = True,
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 2,
    ) -> None:
        cfg = model.config
        if max_len > cfg.rope_len:
            raise ValueError(
                f"max_len {max_len} exceeds the model's rotary table ({cfg.rope_len}); "
                "raise LRTConfig.rope_len or decode fewer tokens"
            )
        device = model.device
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on CUDA, not {device}")
        self.model = model
        self.batch_size, self.max_len = batch_size, max_len
        self.autocast_dtype = autocast_dtype
        dtype = model.wte.weight.dtype
        self.cache = StaticKVCache(
            cfg.n_layer, batch_size, cfg.n_kv_head, cfg.head_dim, max_len, device,
            autocast_dtype or dtype,
        )  # fmt: skip
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.memory = torch.zeros(batch_size, 1, cfg.n_embd, device=device, dtype=dtype)
        self.n = 0  # tokens fed so far (host-side mirror of cache.pos)
        self._fused = model.fused_projection_weights() if fuse else None
        self._fused_from = self._weight_versions()
        # The plain function, called with self: a bound method stored on self would be a
        # reference cycle, and a decoder (model, cache, graph pool) would outlive its last use
        # until the next full garbage collection.
        fn: Callable[[StaticDecoder], Tensor] = StaticDecoder._step_impl
        if compile_backend is not None:
            fn = torch.compile(fn, backend=compile_backend, dynamic=False, fullgraph=True)
        self._fn = fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self._logits: Tensor | None = None
        if cuda_graph:
            self._capture(warmup)

    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _step_impl(self) -> Tensor:
        model = self.model
        # Autocast as asked at construction, whatever surrounds the call (the cache's dtype is
        # fixed), and never its cast cache: cached weight casts would be freed after a captured
        # graph was recorded.
        dt = self.autocast_dtype
        with torch.autocast(
            self.cache.pos.device.type, dtype=dt, enabled=dt is not None, cache_enabled=False
        ):
            out = model(self.tokens, self.memory, cache=self.cache, fused_weights=self._fused)
            self.memory.copy_(out.source[:, -1:])
            return model.head(out.hidden)[:, -1]

    def _capture(self, warmup: int) -> None:
        """Warm up on a side stream (compiles, picks kernels, allocates), then record."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                self.reset()  # every warm-up step at row 0: a 1-row cache has no row 1
                self._fn(self)
        torch.cuda.current_stream().wait_stream(side)
        self.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self._fn(self)
        self._graph = graph
        self.reset()  # capture does not run the kernels; this only restates the empty state

    def _weight_versions(self) -> list[int]:
        """In-place update counters of the weights the fused stack copies (an optimizer step
        or `load_state_dict` bumps them)."""
        if self._fused is None:
            return []
        return [p._version for p in self.model.parameters()]

    def reset(self) -> None:
        """Start new sequences: empty cache, zero memory; re-stack fused weights that changed."""
        self.cache.reset()
        self.memory.zero_()
        self.n = 0
        versions = self._weight_versions()
        if versions != self._fused_from:
            self.model.fused_projection_weights(out=self._fused)  # in place: graph stays valid
            self._fused_from = versions

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens (B,) or (B, 1); return next-token logits (B, V) (a fresh tensor)."""
        if self.n >= self.max_len:
            raise ValueError(
                f"static cache full ({self.max_len} tokens); build the decoder with a larger "
                "max_len or call reset()"
            )
        if tokens.numel() != self.batch_size:
            raise ValueError(f"expected {self.batch_size} tokens, got shape {tuple(tokens.shape)}")
        self.tokens.copy_(tokens.view(-1, 1))
        if self._graph is not None:
            self._graph.replay()
            logits = self._logits
        else:
            logits = self._fn(self)
        self.n += 1
        return logits.clone()

    @torch.no_grad()
    def prefill(self, prompt: Tensor) -> Tensor:
        """Feed prompt (B, T0) into a fresh state, exactly, one token per step (an LRT's memory
        needs the previous token's state); return the logits after its last token (B, V)."""
        if self.n != 0:
            raise ValueError("prefill needs a fresh state; call reset() first")
        if prompt.dim() != 2 or prompt.size(1) == 0:
            raise ValueError(f"prompt must be (B, T0) with T0 >= 1, got {tuple(prompt.shape)}")
        logits = None
        for i in range(prompt.size(1)):
            logits = self.step(prompt[:, i])
        return logits
