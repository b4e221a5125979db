"""nanochat's optimizer: Muon for the block/pathway matrices, AdamW for the rest, one object.

The default is nanochat's MuonAdamW as the LRT authors' fork runs it (`nanochat/optim.py`,
`gpt.py: setup_optimizer`, `scripts/base_train.py` at e0d0f6e; docs/TRAINING.md names every
group and its learning rate):

- Muon (https://kellerjordan.github.io/posts/muon/): Nesterov momentum, then each 2-D update
  replaced by an approximately orthogonal matrix with the same singular vectors, by five
  *Polar Express* steps (Amsel et al. 2025, https://arxiv.org/abs/2505.16932; per-step
  coefficients, tighter than one fixed quintic); then NorMuon-style *variance reduction*
  (https://arxiv.org/abs/2510.05491: a factored per-row, or per-column for wide matrices,
  second moment rescales the update, keeping its Frobenius norm); then the step with
  *cautious* weight decay (decay only the entries whose update agrees in sign with the weight).
- AdamW for the token embedding, value embeddings, LM head and scalars, no weight decay.

The previous optimizer (quintic Newton-Schulz Muon, plain decoupled decay) stays reachable:
`muon_variant="newton_schulz", variance_reduction=False, cautious_wd=False`
(`OptimizerRecipe.legacy()`).

One `MuonAdamW` (a `torch.optim.Optimizer`) holds all groups, so a checkpoint stores one
`state_dict()`; state is per parameter (nanochat stacks it per shape group; the update is the
same, every operation acts on one matrix at a time). Under DDP every rank holds full replicas
and DDP all-reduces gradients before `step()`, so a plain step is correct; `distributed=True`
additionally splits the orthogonalisation across ranks (each rank orthogonalises every
world_size-th matrix, then all-gathers; the cheap elementwise work runs on every rank so the
replicated state stays identical).

Example:
    >>> import torch
    >>> net = torch.nn.ModuleDict({"blocks": torch.nn.Linear(8, 8, bias=False)})
    >>> opt = MuonAdamW([dict(kind="muon", params=list(net.parameters()), lr=0.02)])
    >>> net.blocks.weight.sum().backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lrt.schedule import (
    REFERENCE_BATCH_TOKENS,
    REFERENCE_DEPTH,
    batch_lr_scale,
    depth_weight_decay,
    lr_multiplier,
    muon_momentum,
    weight_decay_multiplier,
)

__all__ = [
    "GROUP_NAMES",
    "NS_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "MuonAdamW",
    "OptimizerRecipe",
    "build_optimizer",
    "lr_multiplier",
    "muon_momentum",
    "param_groups",
    "unwrap_model",
    "variance_reduction",
    "weight_decay_multiplier",
    "zeropower_via_newtonschulz",
    "zeropower_via_polar_express",
]

MuonVariant = Literal["polar_express", "newton_schulz"]

# Quintic Newton-Schulz coefficients (Keller Jordan). They maximise the slope at 0 so five steps
# suffice; singular values land in [0.68, 1.21] (for inputs above 2e-3 of the Frobenius norm).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5

# Polar Express coefficients for 5 iterations (safety factor 2e-2, cushion 2), one (a, b, c)
# per step, as published (arXiv 2505.16932) and used by nanochat.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# The fork divides by 1.02 |X|_F (nanochat later moved to 1.01 with MuonEq/Muon+ extras).
PE_NORM_FACTOR = 1.02


# -----------------------------------------------------------------------------
# Orthogonalisation


def _compute_dtype(G: Tensor) -> torch.dtype:
    # bf16 on CUDA (stable there and tensor-core fast); fp32 elsewhere (CPU bf16 matmuls are
    # slow and the float32 tests compare against references at 1e-5)
    return torch.bfloat16 if G.is_cuda else torch.float32


def zeropower_via_newtonschulz(G: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """Approximate U V^T for G = U S V^T (batched over leading dims) by a quintic iteration.

    Runs in bfloat16 on CUDA and float32 elsewhere. The result has G's singular vectors;
    singular values of G above 2e-3 of its Frobenius norm map into [0.68, 1.21].

    Args:
        G: (..., m, n) matrix or stack of matrices.
        steps: Newton-Schulz iterations.

    Returns:
        Tensor of G's shape, in the compute dtype (bf16 on CUDA, fp32 otherwise).

    Example:
        >>> X = zeropower_via_newtonschulz(torch.randn(16, 32))
        >>> bool((torch.linalg.svdvals(X) - 1).abs().max() < 0.35)
        True
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    X = G.to(_compute_dtype(G))
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the small one
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def zeropower_via_polar_express(
    G: Tensor,
    steps: int = 5,
    *,
    norm_factor: float = PE_NORM_FACTOR,
    row_equilibrate: bool = False,
    renormalize: bool = False,
) -> Tensor:
    """Approximate U V^T for G = U S V^T (batched over leading dims) by Polar Express.

    nanochat's iteration: X = G / (norm_factor |G|_F + 1e-6), then per step (a, b, c) of
    `POLAR_EXPRESS_COEFFS`: wide/square `X <- a X + (b A + c A^2) X` with A = X X^T; tall
    `X <- a X + X (b A + c A^2)` with A = X^T X (the Gram matrix on the small side).

    Args:
        G: (..., m, n) matrix or stack of matrices.
        steps: Iterations, 1..5 (the coefficients are tuned for 5).
        norm_factor: Safety factor on the Frobenius norm (fork 1.02; nanochat now 1.01).
        row_equilibrate: nanochat's later MuonEq: rescale rows to the mean row norm first.
        renormalize: nanochat's later Muon+: snap the result's Frobenius norm to sqrt(min(m, n)).

    Returns:
        Tensor of G's shape, in the compute dtype (bf16 on CUDA, fp32 otherwise).

    Example:
        >>> X = zeropower_via_polar_express(torch.randn(16, 32))
        >>> bool((torch.linalg.svdvals(X) - 1).abs().max() < 0.2)
        True
    """
    if G.ndim < 2:
        raise ValueError(f"Polar Express needs a matrix, got shape {tuple(G.shape)}")
    if not 1 <= steps <= len(POLAR_EXPRESS_COEFFS):
        raise ValueError(
            f"Polar Express has coefficients for 1..{len(POLAR_EXPRESS_COEFFS)} steps, got "
            f"ns_steps={steps}; use 5 (or muon_variant='newton_schulz' for more steps)"
        )
    X = G.to(_compute_dtype(G))
    if row_equilibrate:
        target = X.float().norm(dim=(-2, -1), keepdim=True) / (X.size(-2) ** 0.5)
        row_norm = X.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        X = X * (target / row_norm).to(X.dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * norm_factor + 1e-6)
    if X.size(-2) > X.size(-1):  # tall
        for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
            A = X.mT @ X  # (..., n, n)
            B = b * A + c * (A @ A)
            X = a * X + X @ B
    else:
        for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
            A = X @ X.mT  # (..., m, m)
            B = b * A + c * (A @ A)
            X = a * X + B @ X
    if renormalize:
        target_norm = min(X.size(-2), X.size(-1)) ** 0.5
        norm = X.float().norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
        X = X * (target_norm / norm).to(X.dtype)
    return X


def variance_reduction(update: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """NorMuon-style factored variance reduction of orthogonalised updates (nanochat).

    For each (m, n) matrix U with reduction dim r (the columns, -1, when m >= n; else the
    rows, -2): v = mean(U^2 over r) (one value per row, or per column), the running second
    moment `second_moment <- lerp(second_moment, v, 1 - beta2)` (in place), s = rsqrt(max(
    second_moment, 1e-10)), and the result `U * s * |U|_F / |U * s|_F` (same Frobenius norm,
    rows/columns of persistently large updates scaled down).

    Args:
        update: (..., m, n) orthogonalised updates (float32 recommended).
        second_moment: (..., m, 1) when m >= n, else (..., 1, n); updated in place.
        beta2: Second-moment EMA coefficient (fork 0.95).

    Example:
        >>> U, v = torch.ones(4, 2), torch.zeros(4, 1)
        >>> torch.equal(variance_reduction(U, v, 0.9), U)
        True
    """
    red_dim = -1 if update.size(-2) >= update.size(-1) else -2
    v_mean = update.float().square().mean(dim=red_dim, keepdim=True)
    red_size = update.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()  # |U|_F
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1.0 - beta2)
    step_size = second_moment.clamp_min(1e-10).rsqrt()
    scaled_sq_sum = (v_mean * red_size) * step_size.float().square()
    v_norm_new = scaled_sq_sum.sum(dim=(-2, -1), keepdim=True).sqrt()  # |U * s|_F
    final_scale = step_size * (v_norm / v_norm_new.clamp_min(1e-10))
    return update * final_scale.to(update.dtype)


def _second_moment_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = shape[-2], shape[-1]
    return (rows, 1) if rows >= cols else (1, cols)


# -----------------------------------------------------------------------------
# The combined optimizer

_MUON_DEFAULTS: dict[str, Any] = dict(
    momentum=0.95,
    nesterov=True,
    ns_steps=NS_STEPS,
    variant="polar_express",
    variance_reduction=True,
    beta2=0.95,
    cautious_wd=True,
    norm_factor=PE_NORM_FACTOR,
    row_equilibrate=False,
    renormalize=False,
)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with `kind="muon"`, AdamW for groups with `kind="adamw"`.

    Group keys (defaults in brackets):
        muon:  lr, momentum [0.95], nesterov [True], ns_steps [5], weight_decay [0.0],
               variant ["polar_express" | "newton_schulz"], variance_reduction [True],
               beta2 [0.95] (its EMA), cautious_wd [True], norm_factor [1.02],
               row_equilibrate [False], renormalize [False] (the last three: Polar Express)
        adamw: lr, betas [(0.8, 0.95)], eps [1e-10], weight_decay [0.0]
        both:  name [kind], initial_lr [lr], initial_weight_decay [weight_decay] (the bases
               `set_schedule` multiplies)

    Muon's step for a (rows, cols) matrix uses `lr_eff = lr * max(1, rows/cols) ** 0.5`
    (nanochat), so the update's RMS does not shrink for tall matrices, and
    `p <- p - lr_eff * U - lr_eff * wd * p * mask` with mask = (U * p >= 0) when cautious_wd,
    else all ones. AdamW's decay is decoupled (`p *= 1 - lr * wd`).

    Args:
        params: List of group dicts (each with a `kind`).
        distributed: Split the orthogonalisation across the ranks of the default process
            group. Gradients must already be identical on every rank (DDP, or an all-reduce).
    """

    def __init__(self, params: Iterable[dict[str, Any]], *, distributed: bool = False) -> None:
        groups = []
        for group in params:
            group = dict(group)
            kind = group.get("kind")
            if kind == "muon":
                for key, value in _MUON_DEFAULTS.items():
                    group.setdefault(key, value)
                if group["variant"] not in ("polar_express", "newton_schulz"):
                    raise ValueError(
                        f"Muon variant must be 'polar_express' or 'newton_schulz', got "
                        f"{group['variant']!r}"
                    )
                if group["variant"] == "polar_express" and not (
                    1 <= group["ns_steps"] <= len(POLAR_EXPRESS_COEFFS)
                ):
                    raise ValueError(
                        f"Polar Express runs 1..5 steps, got ns_steps={group['ns_steps']}"
                    )
            elif kind == "adamw":
                group.setdefault("betas", (0.8, 0.95))
                group.setdefault("eps", 1e-10)
            else:
                raise ValueError(f"optimizer group kind must be 'muon' or 'adamw', got {kind!r}")
            if "lr" not in group:
                raise ValueError(f"group {group.get('name', kind)!r} has no lr")
            group.setdefault("weight_decay", 0.0)
            group.setdefault("name", kind)
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("initial_weight_decay", group["weight_decay"])
            params_list = list(group["params"])
            if kind == "muon":
                bad = [tuple(p.shape) for p in params_list if p.ndim != 2]
                if bad:
                    raise ValueError(
                        f"Muon group {group['name']!r} needs 2-D parameters, got shapes {bad}"
                    )
            group["params"] = params_list
            groups.append(group)
        super().__init__(groups, defaults={})
        self.distributed = distributed and dist.is_available() and dist.is_initialized()

    # -- schedule -------------------------------------------------------------

    def set_schedule(
        self, lr_mult: float, momentum: float | None = None, wd_mult: float | None = None
    ) -> None:
        """Set every group's lr to `initial_lr * lr_mult`; if given, Muon groups' momentum and
        weight decay (`initial_weight_decay * wd_mult`; nanochat decays it linearly to 0).

        Example:
            >>> # opt.set_schedule(lr_multiplier(s, n), muon_momentum(s),
            >>> #                  weight_decay_multiplier(s, n))
        """
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
            if group["kind"] != "muon":
                continue
            if momentum is not None:
                group["momentum"] = momentum
            if wd_mult is not None:
                group["weight_decay"] = group["initial_weight_decay"] * wd_mult

    # -- step -----------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw(group)
            else:
                self._muon(group)
        return loss

    def _adamw(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            if wd:
                p.mul_(1.0 - lr * wd)
            exp_avg.lerp_(grad, 1.0 - beta1)
            exp_avg_sq.lerp_(grad.square(), 1.0 - beta2)
            denom = (exp_avg_sq / (1.0 - beta2**t)).sqrt_().add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1**t))

    def _muon(self, group: dict[str, Any]) -> None:
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        # Nesterov momentum as multi-tensor (`_foreach`) kernels over all matrices at once, and
        # same-shape matrices stacked for the orthogonalisation and the update: a d12 model
        # has 72 matrices, and per-matrix kernels made the step launch-bound.
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["variance_reduction"] and "second_momentum_buffer" not in state:
                # (rows, 1) or (1, cols); lazily added, so pre-VR checkpoints still resume
                state["second_momentum_buffer"] = p.new_zeros(_second_moment_shape(p.shape))
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1.0 - mom)
        updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs

        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[tuple(p.shape)].append(i)
        for shape, idx in by_shape.items():
            ps = [params[i] for i in idx]
            U = self._orthogonalise(torch.stack([updates[i] for i in idx]), group)  # (K, m, n)
            if group["variance_reduction"]:
                second = [self.state[p]["second_momentum_buffer"] for p in ps]
                V = torch.stack(second)  # (K, m, 1) or (K, 1, n)
                U = variance_reduction(U, V, group["beta2"])
                torch._foreach_copy_(second, list(V.unbind(0)))
            lr_eff = lr * max(1.0, shape[0] / shape[1]) ** 0.5
            if group["cautious_wd"] or wd:
                P = torch.stack(ps)
                decay = P * ((U * P) >= 0) if group["cautious_wd"] else P
                P.sub_(lr_eff * U + (lr_eff * wd) * decay)
                torch._foreach_copy_(ps, list(P.unbind(0)))
            else:
                torch._foreach_add_(ps, list(U.unbind(0)), alpha=-lr_eff)

    def _zeropower(self, X: Tensor, group: dict[str, Any]) -> Tensor:
        if group["variant"] == "newton_schulz":
            return zeropower_via_newtonschulz(X, group["ns_steps"])
        return zeropower_via_polar_express(
            X,
            group["ns_steps"],
            norm_factor=group["norm_factor"],
            row_equilibrate=group["row_equilibrate"],
            renormalize=group["renormalize"],
        )

    def _orthogonalise(self, stack: Tensor, group: dict[str, Any]) -> Tensor:
        """Orthogonalise a (K, m, n) stack (split across ranks if asked), returned in the
        stack's dtype (one cast for the whole stack)."""
        if not self.distributed or dist.get_world_size() == 1:
            return self._zeropower(stack, group).to(stack.dtype)
        world, rank = dist.get_world_size(), dist.get_rank()
        n = stack.size(0)
        per_rank = -(-n // world)  # ceil
        if per_rank * world > n:
            pad = stack.new_zeros(per_rank * world - n, *stack.shape[1:])
            stack = torch.cat([stack, pad])
        mine = stack[rank * per_rank : (rank + 1) * per_rank]
        out = self._zeropower(mine, group).to(stack.dtype).contiguous()
        # list all_gather rather than all_gather_into_tensor: gloo (CPU tests) lacks the latter
        chunks = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(chunks, out)
        return torch.cat(chunks)[:n]


# -----------------------------------------------------------------------------
# Grouping a model's parameters

# Every group `param_groups` can return, in the order `build_optimizer` creates them.
GROUP_NAMES = (
    "lm_head",
    "embedding",
    "value_embeds",
    "resid_lambdas",
    "x0_lambdas",
    "scalar",
    "matrix",
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The LRT inside torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Classify every parameter of an LRT model by how it is optimised (keys: `GROUP_NAMES`).

    - "lm_head": the head's weight; "embedding": `model.wte`;
    - "value_embeds": every other `nn.Embedding` (the backbone's value embeddings, the
      authors' arm's init value embeddings);
    - "resid_lambdas" / "x0_lambdas": the parameters of those names;
    - "scalar": every other 0-/1-D tensor (the pathway's gamma, ...);
    - "matrix": every other 2-D weight: attention/MLP, the value-embedding and pathway gates,
      the memory/feedback K/V projections (nanochat trains gates inside blocks with Muon).

    Each parameter appears exactly once (shared parameters are counted once).

    Example:
        >>> groups = param_groups(torch.nn.ModuleDict({"blocks": torch.nn.Linear(4, 4)}))
        >>> [name for name, _ in groups["matrix"]], [name for name, _ in groups["scalar"]]
        (['blocks.weight'], ['blocks.bias'])
    """
    model = unwrap_model(model)
    lm_head = getattr(model, "lm_head", None)
    head_ids = {id(p) for p in lm_head.parameters()} if isinstance(lm_head, nn.Module) else set()
    wte = getattr(model, "wte", None)
    wte_ids = {id(p) for p in wte.parameters()} if isinstance(wte, nn.Embedding) else set()
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if not wte_ids:  # no `wte`: the first embedding is the token table
        first = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        wte_ids = {id(first.weight)} if first is not None else set()
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in GROUP_NAMES}
    for name, p in model.named_parameters():  # deduplicates shared parameters
        leaf = name.rsplit(".", 1)[-1]
        if id(p) in head_ids:
            groups["lm_head"].append((name, p))
        elif id(p) in wte_ids:
            groups["embedding"].append((name, p))
        elif id(p) in embed_ids:
            groups["value_embeds"].append((name, p))
        elif p.ndim <= 1 and leaf in ("resid_lambdas", "x0_lambdas"):
            groups[leaf].append((name, p))
        elif p.ndim <= 1:
            groups["scalar"].append((name, p))
        elif p.ndim == 2:
            groups["matrix"].append((name, p))
        else:
            raise ValueError(
                f"parameter {name} has shape {tuple(p.shape)}; only 0-2-D parameters have an "
                "optimizer rule (flatten it or add a rule in lrt/optim.py)"
            )
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    matrix_lr: float = 0.02,
    embedding_lr: float = 0.2,
    unembedding_lr: float = 0.004,
    scalar_lr: float = 0.5,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.8, 0.95),
    momentum: float = 0.95,
    distributed: bool = False,
    lr_scale: float = 1.0,
    x0_betas: tuple[float, float] = (0.96, 0.95),
    eps: float = 1e-10,
    muon_variant: MuonVariant = "polar_express",
    variance_reduction: bool = True,
    muon_beta2: float = 0.95,
    cautious_wd: bool = True,
    ns_steps: int = NS_STEPS,
) -> MuonAdamW:
    """nanochat's `GPT.setup_optimizer` for an LRT model (baseline, pathway or authors' arm).

    Groups (see docs/TRAINING.md), with s = (n_embd/768)^-0.5 and every lr times `lr_scale`:
        lm_head        AdamW  unembedding_lr * s   betas
        embedding      AdamW  embedding_lr * s     betas
        value_embeds   AdamW  embedding_lr * s     betas
        resid_lambdas  AdamW  scalar_lr * 0.01     betas
        x0_lambdas     AdamW  scalar_lr            x0_betas
        scalar         AdamW  scalar_lr            betas   (gamma and any other scalar)
        matrix         Muon   matrix_lr            momentum, muon_beta2, weight_decay
    AdamW groups use no weight decay and `eps`, as nanochat. `lr_scale` is nanochat's
    `batch_lr_scale` (`lrt.schedule.batch_lr_scale`); `weight_decay` is used as given (scale
    it with `lrt.schedule.depth_weight_decay`, or use `OptimizerRecipe.build`).

    Args:
        model: An `lrt.LRT` (or any module with `lm_head` / `nn.Embedding` / 2-D matrices).
        distributed: Split the orthogonalisation across DDP ranks (see `MuonAdamW`).
        muon_variant, variance_reduction, cautious_wd: "newton_schulz", False, False give
            the optimizer before nanochat's Polar Express recipe.

    Example:
        >>> # opt = build_optimizer(model); loss.backward(); opt.step(); opt.zero_grad()
    """
    model = unwrap_model(model)
    groups = param_groups(model)
    s = (_model_dim(model) / 768) ** -0.5
    adam = dict(kind="adamw", eps=eps, weight_decay=0.0)
    spec = [
        dict(adam, name="lm_head", lr=unembedding_lr * s, betas=betas),
        dict(adam, name="embedding", lr=embedding_lr * s, betas=betas),
        dict(adam, name="value_embeds", lr=embedding_lr * s, betas=betas),
        dict(adam, name="resid_lambdas", lr=scalar_lr * 0.01, betas=betas),
        dict(adam, name="x0_lambdas", lr=scalar_lr, betas=x0_betas),
        dict(adam, name="scalar", lr=scalar_lr, betas=betas),
        dict(
            kind="muon",
            name="matrix",
            lr=matrix_lr,
            momentum=momentum,
            weight_decay=weight_decay,
            variant=muon_variant,
            variance_reduction=variance_reduction,
            beta2=muon_beta2,
            cautious_wd=cautious_wd,
            ns_steps=ns_steps,
        ),
    ]
    built = []
    for g in spec:
        ps = [p for _, p in groups[g["name"]]]
        if ps:
            built.append({**g, "lr": g["lr"] * lr_scale, "params": ps})
    return MuonAdamW(built, distributed=distributed)


def _model_dim(model: nn.Module) -> int:
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "n_embd", None):
        return int(cfg.n_embd)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m.embedding_dim
    raise ValueError(
        "cannot find the model width: give the model a .config with n_embd or an nn.Embedding"
    )


# -----------------------------------------------------------------------------
# The recipe (nanochat's scripts/base_train.py)


@dataclass(frozen=True)
class OptimizerRecipe:
    """nanochat's training recipe (base_train.py as the authors' fork runs it) in one value.

    Learning rates and `weight_decay` are the values nanochat tunes at its reference point
    (batch 2^19 tokens, depth 12); `build` scales every lr by `sqrt(B / 2^19)` and the Muon
    weight decay by `(12 / depth)^2`; `schedule` gives the per-step multipliers (warm-down
    0.5 to `final_lr_frac`, momentum 0.85 -> 0.95 over 300 steps, weight decay linear to 0).
    nanochat clips no gradients (`grad_clip` 0).

    Example:
        >>> r = OptimizerRecipe()
        >>> round(r.lr_scale(2**17), 3), round(r.weight_decay_at(depth=20), 4)
        (0.5, 0.072)
        >>> r.schedule(0, 100)
        (1.0, 0.85, 1.0)
    """

    matrix_lr: float = 0.02
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.5
    weight_decay: float = 0.2
    adam_betas: tuple[float, float] = (0.8, 0.95)
    x0_betas: tuple[float, float] = (0.96, 0.95)
    eps: float = 1e-10
    muon_variant: MuonVariant = "polar_express"
    variance_reduction: bool = True
    muon_beta2: float = 0.95
    cautious_wd: bool = True
    ns_steps: int = 5
    reference_batch_tokens: int | None = REFERENCE_BATCH_TOKENS
    reference_depth: int | None = REFERENCE_DEPTH
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.5
    final_lr_frac: float = 0.0
    momentum_warmup_steps: int = 300
    momentum_start: float = 0.85
    momentum_end: float = 0.95
    schedule_weight_decay: bool = True
    grad_clip: float = 0.0

    @classmethod
    def legacy(cls) -> OptimizerRecipe:
        """The pipeline's recipe before nanochat's: Newton-Schulz Muon, no variance reduction,
        no weight decay, no batch scaling, embedding lr 0.2, scalar lr 0.02, warm-down 0.2,
        gradient clip 1."""
        return cls(
            embedding_lr=0.2,
            scalar_lr=0.02,
            weight_decay=0.0,
            x0_betas=(0.8, 0.95),
            muon_variant="newton_schulz",
            variance_reduction=False,
            cautious_wd=False,
            reference_batch_tokens=None,
            reference_depth=None,
            warmdown_ratio=0.2,
            schedule_weight_decay=False,
            grad_clip=1.0,
        )

    def lr_scale(self, total_batch_tokens: int) -> float:
        """Factor on every learning rate: sqrt(total_batch_tokens / reference_batch_tokens)."""
        return batch_lr_scale(total_batch_tokens, self.reference_batch_tokens)

    def weight_decay_at(self, depth: int) -> float:
        """Muon weight decay at the start of training for a model of `depth` blocks."""
        return depth_weight_decay(self.weight_decay, depth, self.reference_depth)

    def build(
        self, model: nn.Module, total_batch_tokens: int, *, distributed: bool = False
    ) -> MuonAdamW:
        """The optimizer for `model` trained with `total_batch_tokens` tokens per step."""
        inner = unwrap_model(model)
        depth = _model_depth(inner)
        return build_optimizer(
            inner,
            matrix_lr=self.matrix_lr,
            embedding_lr=self.embedding_lr,
            unembedding_lr=self.unembedding_lr,
            scalar_lr=self.scalar_lr,
            weight_decay=self.weight_decay_at(depth),
            betas=self.adam_betas,
            momentum=self.momentum_end,
            distributed=distributed,
            lr_scale=self.lr_scale(total_batch_tokens),
            x0_betas=self.x0_betas,
            eps=self.eps,
            muon_variant=self.muon_variant,
            variance_reduction=self.variance_reduction,
            muon_beta2=self.muon_beta2,
            cautious_wd=self.cautious_wd,
            ns_steps=self.ns_steps,
        )

    def schedule(self, step: int, total_steps: int) -> tuple[float, float, float]:
        """(lr multiplier, Muon momentum, weight-decay multiplier) before optimizer step `step`;
        pass them to `MuonAdamW.set_schedule`."""
        lr = lr_multiplier(
            step, total_steps, self.warmup_ratio, self.warmdown_ratio, self.final_lr_frac
        )
        mom = muon_momentum(
            step, self.momentum_warmup_steps, self.momentum_start, self.momentum_end
        )
        wd = weight_decay_multiplier(step, total_steps) if self.schedule_weight_decay else 1.0
        return lr, mom, wd


def _model_depth(model: nn.Module) -> int:
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    depth = getattr(cfg, "depth", None) or getattr(cfg, "n_layer", None)
    if depth:
        return int(depth)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return len(blocks)
    raise ValueError("cannot find the model depth: give the model a .config with depth")
