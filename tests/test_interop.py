"""lrt.interop: nanochat / authors'-fork checkpoints in and out.

The side-by-side check against the authors' code itself lives outside the repository (their
code is not ours to commit); here: round trips, exact parameter counts, key errors, and an
independent functional forward written from the nanochat-named state dict alone (nanochat's
GPT.forward as equations: resid/x0 lambdas, value-embedding gate, triple gate with zero
feedback, sliding windows, GQA, padded head).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrt import LRT, LRTConfig, StrategyConfig
from lrt.interop import (
    GPT_CONFIG_DEFAULTS,
    InteropError,
    from_nanochat,
    lrt_config_from_nanochat,
    nanochat_strategy,
    to_nanochat,
)

torch.set_num_threads(1)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def nanochat_config(**kw) -> dict:
    cfg = dict(sequence_len=16, vocab_size=97, n_layer=3, n_head=4, n_kv_head=2, n_embd=64)
    cfg.update(kw)
    return cfg


def random_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A nanochat-named state dict with every tensor random and non-zero, built from an LRT
    (the names and shapes are what nanochat's GPT has: checked by from_nanochat's strict
    loading and, outside the repo, against the authors' code)."""
    torch.manual_seed(seed)
    model = LRT(lrt_config_from_nanochat(cfg))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.uniform_(-0.3, 0.3)
            else:
                p.uniform_(0.2, 0.8)
    return to_nanochat(model, nanochat_strategy(cfg))[0]


# ---------------------------------------------------------------------------------------------
# Independent functional reference: nanochat's GPT.forward from the state dict


def _rms(x):
    return F.rms_norm(x, (x.size(-1),))


def _rope(x, pos):  # x: (B, T, H, D); nanochat: y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos
    d = x.size(-1)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)


def nanochat_forward(sd: dict, cfg: dict, idx: torch.Tensor, h_prev=None, return_hidden=False):
    """GPT.forward(idx, h_final_prev=h_prev) as equations (fork LRT: h_prev None = zeros);
    logits (B, T, V) (and the normed final states with return_hidden)."""
    c = {
        "window_pattern": "SSSL",
        "use_value_embeds": True,
        "ve_every_layer": False,
        "use_x0_residual": True,
        "use_resid_lambdas": True,
        "ve_gate_channels": 32,
        "use_interleaved": False,
        **cfg,
    }
    b, t = idx.shape
    n, h, hkv = c["n_layer"], c["n_head"], c["n_kv_head"]
    d = c["n_embd"] // h
    gch = c["ve_gate_channels"] or c["n_embd"]
    pattern = c["window_pattern"]
    windows = [
        c["sequence_len"] // (2 if pattern[i % len(pattern)] == "S" else 1) for i in range(n)
    ]
    windows[-1] = c["sequence_len"]
    pos = torch.arange(t)
    x = _rms(sd["transformer.wte.weight"][idx])
    x0 = x
    for i in range(n):
        p = f"transformer.h.{i}.attn."
        if c["use_resid_lambdas"]:
            x = sd["resid_lambdas"][i] * x
        if c["use_x0_residual"]:
            x = x + sd["x0_lambdas"][i] * x0
        if h_prev is not None:
            x = x + sd["interleaved_lambdas"][i] * h_prev
        xn = _rms(x)
        q = (xn @ sd[p + "c_q.weight"].T).view(b, t, h, d)
        k = (xn @ sd[p + "c_k.weight"].T).view(b, t, hkv, d)
        v = (xn @ sd[p + "c_v.weight"].T).view(b, t, hkv, d)
        if c["use_interleaved"]:
            g = 2 * torch.sigmoid(xn[..., :gch] @ sd[p + "triple_gate.weight"].T)
            gl, gv = g[..., :hkv, None], g[..., 2 * hkv :, None]
            ve = sd[f"interleaved_init_value_embeds.{i}.weight"][idx].view(b, t, hkv, d)
            v = gl * v + gv * ve
            k = gl * k
            if h_prev is not None:
                gf = g[..., hkv : 2 * hkv, None]
                k_fb = h_prev @ sd[f"interleaved_key_projections.{i}.W_v.weight"].T
                v_fb = h_prev @ sd[f"interleaved_projections.{i}.W_v.weight"].T
                k = k + gf * k_fb.view(b, t, hkv, d)
                v = v + gf * v_fb.view(b, t, hkv, d)
        elif f"value_embeds.{i}.weight" in sd:
            g = 2 * torch.sigmoid(xn[..., :gch] @ sd[p + "ve_gate.weight"].T)
            v = v + g[..., None] * sd[f"value_embeds.{i}.weight"][idx].view(b, t, hkv, d)
        q, k = _rms(_rope(q, pos)), _rms(_rope(k, pos))
        k = k.repeat_interleave(h // hkv, dim=2)  # GQA as repeated K/V heads
        v = v.repeat_interleave(h // hkv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        allowed = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] <= windows[i])
        att = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, -1)
        x = x + y @ sd[p + "c_proj.weight"].T
        m = f"transformer.h.{i}.mlp."
        x = x + F.relu(_rms(x) @ sd[m + "c_fc.weight"].T).square() @ sd[m + "c_proj.weight"].T
    h_final = _rms(x)
    logits = (h_final @ sd["lm_head.weight"].T)[..., : c["vocab_size"]]
    logits = 15 * torch.tanh(logits / 15)
    return (logits, h_final) if return_hidden else logits


CONFIGS = {
    "baseline": nanochat_config(),
    "baseline_L_full_gate": nanochat_config(window_pattern="L", ve_gate_channels=0),
    "baseline_ve_every_layer_mha": nanochat_config(ve_every_layer=True, n_kv_head=4),
    "baseline_bare": nanochat_config(
        use_value_embeds=False, use_x0_residual=False, use_resid_lambdas=False
    ),
    "official": nanochat_config(use_interleaved=True, interleaved_kv_refresh=True),
    "official_gqa1_SL": nanochat_config(use_interleaved=True, n_kv_head=1, window_pattern="SL"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_init_logits_equal_functional_nanochat_forward(name):
    cfg = CONFIGS[name]
    sd = random_state(cfg)
    model = from_nanochat(sd, cfg)
    idx = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = nanochat_forward(sd, cfg, idx)
    torch.testing.assert_close(model.logits(idx, "init"), want, **TOL)
    # and the reference is sharp: one window narrower or one gate weight off changes it
    sd2 = dict(sd)
    key = "transformer.h.0.attn." + ("triple_gate" if cfg.get("use_interleaved") else "c_v")
    sd2[key + ".weight"] = sd[key + ".weight"] * 1.5
    assert (nanochat_forward(sd2, cfg, idx) - want).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["official", "official_gqa1_SL"])
def test_feedback_pass_equals_functional_nanochat_forward(name):
    """One Jacobi refinement (multi_refine K=1) == GPT.forward(idx, h_final_prev=shifted h_final
    of the zero-feedback pass): gamma, both feedback projections and the fb gate mapped right."""
    cfg = CONFIGS[name]
    sd = random_state(cfg, seed=2)
    model = from_nanochat(sd, cfg)
    idx = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, h0 = nanochat_forward(sd, cfg, idx, return_hidden=True)
        h_prev = torch.cat([torch.zeros_like(h0[:, :1]), h0[:, :-1]], 1)
        want = nanochat_forward(sd, cfg, idx, h_prev)
    got = model.logits(idx, "refine", StrategyConfig(name="multi_refine", refine_steps=1))
    torch.testing.assert_close(got, want, **TOL)
    assert (want - model.logits(idx, "init")).abs().max() > 1e-3  # the feedback matters


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_state_and_outputs(name):
    cfg = CONFIGS[name]
    sd = random_state(cfg, seed=1)
    model = from_nanochat(sd, cfg)
    sd2, cfg2 = to_nanochat(model, nanochat_strategy(cfg))
    assert set(sd2) == set(sd)
    for k in sd:
        torch.testing.assert_close(sd2[k], sd[k], rtol=0, atol=0)
    full = {**GPT_CONFIG_DEFAULTS, **cfg}
    assert cfg2 == full
    again = from_nanochat(sd2, cfg2)
    assert again.config == model.config
    idx = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(4))
    strategy = nanochat_strategy(cfg)
    for mode in ("init", "sequential"):
        torch.testing.assert_close(again.logits(idx, mode), model.logits(idx, mode), rtol=0, atol=0)
    loss = model.forward_train(idx, idx, strategy).loss
    assert again.forward_train(idx, idx, strategy).loss.item() == loss.item()


def test_parameter_counts_exact():
    for cfg in CONFIGS.values():
        sd = random_state(cfg)
        model = from_nanochat(sd, cfg)
        assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in sd.values())


def test_paper_scale_counts_equal_the_forks():
    """d12 / vocab 32768 / seq 2048, counted with the authors' own GPT on the meta device
    (docs/REFERENCES: 286.3M baseline, 451.4M LRT arm; exact figures from their code)."""
    base = dict(sequence_len=2048, vocab_size=32768, n_layer=12, n_head=6, n_kv_head=6, n_embd=768)
    for inter, want in ((False, 286_262_424), (True, 451_418_916)):
        with torch.device("meta"):
            m = LRT(lrt_config_from_nanochat({**base, "use_interleaved": inter}))
        assert sum(p.numel() for p in m.parameters()) == want


def test_orig_mod_prefix_and_bf16_weights_load():
    cfg = CONFIGS["baseline"]
    sd = random_state(cfg)
    compiled = {f"_orig_mod.{k}": v.bfloat16() for k, v in sd.items()}
    model = from_nanochat(compiled, cfg)
    assert model.wte.weight.dtype == torch.float32
    torch.testing.assert_close(model.wte.weight, sd["transformer.wte.weight"].bfloat16().float())


def test_key_errors_name_the_keys():
    cfg = CONFIGS["baseline"]
    sd = random_state(cfg)
    missing = dict(sd)
    del missing["value_embeds.2.weight"]
    with pytest.raises(InteropError, match=r"missing keys \['value_embeds\.2\.weight'\]"):
        from_nanochat(missing, cfg)
    extra = {**sd, "transformer.h.0.attn.bogus.weight": torch.zeros(1)}
    with pytest.raises(InteropError, match=r"unexpected keys \['transformer\.h\.0\.attn\.bogus"):
        from_nanochat(extra, cfg)
    # an LRT checkpoint read with a baseline config: the fork's tensors are unexpected
    lrt_sd = random_state(CONFIGS["official"])
    with pytest.raises(InteropError, match="interleaved_lambdas"):
        from_nanochat(lrt_sd, cfg)
    with pytest.raises(InteropError, match=r"unknown nanochat GPTConfig keys \['n_layers'\]"):
        from_nanochat(sd, {**cfg, "n_layers": 3})
    short = {**sd, "transformer.wte.weight": sd["transformer.wte.weight"][:97]}
    with pytest.raises(InteropError, match=r"transformer\.wte\.weight has shape \(97, 64\)"):
        from_nanochat(short, cfg)


def test_to_nanochat_refuses_what_nanochat_cannot_express():
    model = LRT(
        LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
    )
    with pytest.raises(InteropError, match="pathway='shared'"):
        to_nanochat(model)


def test_nanochat_strategy():
    assert nanochat_strategy({}) == StrategyConfig(name="none")
    s = nanochat_strategy(
        {"use_interleaved": True, "interleaved_num_passes": 3, "interleaved_kv_refresh": True}
    )
    assert s == StrategyConfig(name="interleaved", subsets=3, refresh_kv=True)
