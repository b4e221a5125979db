"""A slow, position-by-position reference of the whole model, written out by hand.

Every feature of the backbone and of both pathway families, one query position at a time, with
Python loops over heads and keys where the fast path uses fused kernels: RMSNorm by its
formula, RoPE by angle, the sliding window as "keys p - w .. p", GQA as "query head h reads
K/V head h // (H / Hkv)", the official arm's triple gate, nanochat's value-embedding gate,
resid/x0 lambdas, and the authors' K/V refresh recomputed from the init pass's parts. The
schedules (init pass, interleaved subsets with or without refresh, exact sequential) are
loops over positions and layers with explicit per-layer K/V row lists. Shared by the lrt
test files; float32 or float64 models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def rms(x: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def rope(x: Tensor, pos: int, base: float) -> Tensor:
    """x: (H, D); rotate dim i with dim i + D/2 by angle pos / base^(2i/D)."""
    h, d = x.shape
    half = d // 2
    out = x.clone()
    for i in range(half):
        a = pos / base ** (2 * i / d)
        c, s = math.cos(a), math.sin(a)
        out[:, i] = x[:, i] * c + x[:, i + half] * s
        out[:, i + half] = x[:, i + half] * c - x[:, i] * s
    return out


def _layer_kv_parts(model, i: int, token: int, xn: Tensor):
    """(q, k_base, v_base, gate_fb) of layer i before memory terms: k_base, v_base (Hkv, D)."""
    cfg, pw, blk = model.config, model.pathway, model.blocks[i]
    h, hkv, d, g = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.gate_channels
    q = (blk.attn.c_q.weight @ xn).view(h, d)
    k = (blk.attn.c_k.weight @ xn).view(hkv, d)
    v = (blk.attn.c_v.weight @ xn).view(hkv, d)
    gate_fb = None
    if cfg.pathway == "official":
        gates = 2 * torch.sigmoid(blk.attn.triple_gate.weight @ xn[:g])  # (3 Hkv,)
        gl, gf, gv = gates[:hkv], gates[hkv : 2 * hkv], gates[2 * hkv :]
        ve = pw.init_value_embeds[str(i)].weight[token].view(hkv, d)
        k = gl[:, None] * k
        v = gl[:, None] * v + gv[:, None] * ve
        gate_fb = gf
    else:
        if str(i) in model.value_embeds:
            gv = 2 * torch.sigmoid(blk.attn.ve_gate.weight @ xn[:g])  # (Hkv,)
            v = v + gv[:, None] * model.value_embeds[str(i)].weight[token].view(hkv, d)
        if pw is not None and pw.gates is not None:
            gate_fb = 2 * torch.sigmoid(pw.gates[i].weight @ xn)  # (Hkv,)
    return q, k, v, gate_fb


def memory_terms(model, i: int, mem: Tensor) -> tuple[Tensor, Tensor]:
    """(Wk_m mem, Wv_m mem) of layer i, each (Hkv, D)."""
    cfg, pw = model.config, model.pathway
    j = 0 if len(pw.k_proj) == 1 else i
    shape = (cfg.n_kv_head, cfg.head_dim)
    return (pw.k_proj[j].weight @ mem).view(shape), (pw.v_proj[j].weight @ mem).view(shape)


def finish_k(model, k_pre: Tensor, pos: int) -> Tensor:
    return rms(rope(k_pre, pos, model.config.rope_base))


def position(model, token: int, pos: int, mem: Tensor, visible: Callable):
    """One position through every layer. visible(layer, k, v) -> (K, V), each (pos+1, Hkv, D):
    the rows of keys 0..pos this query may see before the window, its own (k, v) last.
    Returns (final normed state, source state, per layer (k, v), per layer (k_base, v_base,
    gate_fb, pos) for the refresh)."""
    cfg, pw = model.config, model.pathway
    h, hkv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    zero_mem = cfg.zero_memory or pw is None
    if zero_mem:
        mem = torch.zeros_like(mem)
    x0 = rms(model.wte.weight[token])
    x = x0
    kvs, parts, source = [], [], None
    for i, blk in enumerate(model.blocks):
        if model.resid_lambdas is not None:
            x = model.resid_lambdas[i] * x
        if model.x0_lambdas is not None:
            x = x + model.x0_lambdas[i] * x0
        if pw is not None and pw.gamma is not None:
            x = x + pw.gamma[i] * mem
        xn = rms(x)
        q, k, v, gate_fb = _layer_kv_parts(model, i, token, xn)
        parts.append((k, v, gate_fb))
        if pw is not None and pw.k_proj is not None:
            k_fb, v_fb = memory_terms(model, i, mem)
            k = k + gate_fb[:, None] * k_fb
            v = v + gate_fb[:, None] * v_fb
        q, k = rms(rope(q, pos, cfg.rope_base)), finish_k(model, k, pos)
        keys, values = visible(i, k, v)
        w = model.window_sizes[i]
        keys, values = keys[max(0, pos - w) :], values[max(0, pos - w) :]  # keys pos-w .. pos
        group = h // hkv
        y = torch.empty(h, d, dtype=x.dtype)
        for head in range(h):
            kh, vh = keys[:, head // group], values[:, head // group]  # (n, D)
            att = torch.softmax(kh @ q[head] / math.sqrt(d), dim=0)
            y[head] = att @ vh
        x = x + blk.attn.c_proj.weight @ y.reshape(-1)
        x = x + blk.mlp.c_proj.weight @ F.relu(blk.mlp.c_fc.weight @ rms(x)).square()
        kvs.append((k, v))
        if i == cfg.source_index:
            source = rms(x)
    return rms(x), source, kvs, parts


def logits(model, hidden: Tensor) -> Tensor:
    z = (model.lm_head.weight @ hidden)[: model.config.vocab_size]
    c = model.config.softcap
    return c * torch.tanh(z / c) if c > 0 else z


def interleaved(
    model, seq: list[int], subsets: int, refresh: bool = False, refresh_zero: bool = False
) -> list[dict[int, Tensor]]:
    """Slow interleaved schedule for one sequence: per pass, {position: logits}.

    refresh: before each subset pass, rows of positions no subset pass has written yet are
    rebuilt from the init pass's parts with the latest memory (the authors' KV refresh).
    refresh_zero: the same, but with zero memory in the refreshed rows (a deliberate bug, for
    showing that the refresh test can fail)."""
    n_layer, c = model.config.n_layer, model.config.n_embd
    dtype = model.wte.weight.dtype
    n = len(seq)
    buf_k = [[None] * n for _ in range(n_layer)]
    buf_v = [[None] * n for _ in range(n_layer)]
    parts = [None] * n
    src: list[Tensor | None] = [None] * n
    passes = []
    logit_rows = {}
    for t in range(n):

        def visible(i, k, v, t=t):
            return (torch.stack([*buf_k[i][:t], k]), torch.stack([*buf_v[i][:t], v]))

        hid, s, kvs, prt = position(model, seq[t], t, torch.zeros(c, dtype=dtype), visible)
        for i, (k, v) in enumerate(kvs):
            buf_k[i][t], buf_v[i][t] = k, v
        src[t], logit_rows[t], parts[t] = s, logits(model, hid), prt
    passes.append(logit_rows)
    visited: set[int] = set()
    for s_idx in range(subsets):
        if refresh and model.pathway is not None and model.pathway.k_proj is not None:
            for t in range(n):
                if t in visited:
                    continue
                mem = src[t - 1] if t > 0 else torch.zeros(c, dtype=dtype)
                if refresh_zero or model.config.zero_memory:
                    mem = torch.zeros_like(mem)
                for i in range(n_layer):
                    k_base, v_base, gate_fb = parts[t][i]
                    k_fb, v_fb = memory_terms(model, i, mem)
                    buf_k[i][t] = finish_k(model, k_base + gate_fb[:, None] * k_fb, t)
                    buf_v[i][t] = v_base + gate_fb[:, None] * v_fb
        subset = [t for t in range(n) if t % subsets == s_idx]
        src_before = list(src)
        fresh_k = [{} for _ in range(n_layer)]
        fresh_v = [{} for _ in range(n_layer)]
        new_src, logit_rows = {}, {}
        for t in subset:
            mem = src_before[t - 1] if t > 0 else torch.zeros(c, dtype=dtype)

            def visible(i, k, v, t=t, fk=fresh_k, fv=fresh_v):
                ks = [fk[i].get(j, buf_k[i][j]) for j in range(t)] + [k]
                vs = [fv[i].get(j, buf_v[i][j]) for j in range(t)] + [v]
                return torch.stack(ks), torch.stack(vs)

            hid, s, kvs, _ = position(model, seq[t], t, mem, visible)
            for i, (k, v) in enumerate(kvs):
                fresh_k[i][t], fresh_v[i][t] = k, v
            new_src[t], logit_rows[t] = s, logits(model, hid)
        for i in range(n_layer):
            for t in subset:
                buf_k[i][t], buf_v[i][t] = fresh_k[i][t], fresh_v[i][t]
        for t, s in new_src.items():
            src[t] = s
        visited.update(subset)
        passes.append(logit_rows)
    return passes


def sequential(model, seq: list[int]) -> Tensor:
    """Exact token-by-token recurrence for one sequence: (T, V) logits."""
    n_layer, c = model.config.n_layer, model.config.n_embd
    dtype = model.wte.weight.dtype
    ks = [[] for _ in range(n_layer)]
    vs = [[] for _ in range(n_layer)]
    mem = torch.zeros(c, dtype=dtype)
    out = []
    for t, token in enumerate(seq):

        def visible(i, k, v):
            return torch.stack([*ks[i], k]), torch.stack([*vs[i], v])

        hid, s, kvs, _ = position(model, token, t, mem, visible)
        for i, (k, v) in enumerate(kvs):
            ks[i].append(k)
            vs[i].append(v)
        mem = s
        out.append(logits(model, hid))
    return torch.stack(out)
