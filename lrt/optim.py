"""Muon for the block/pathway matrices, AdamW for everything else, in one optimizer object.

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/) runs SGD with Nesterov momentum
and replaces each 2-D update by an approximately orthogonal matrix with the same singular
vectors, computed by a quintic Newton-Schulz iteration. The embedding table, the LM head and
0-/1-D scalars (gamma, lambdas) are trained by AdamW with nanochat's learning rates; the
embedding/head rates scale as (d_model/768)^-0.5.

One `MuonAdamW` (a `torch.optim.Optimizer`) holds all groups, so a checkpoint stores one
`state_dict()`. Under DDP every rank holds full replicas and DDP all-reduces gradients before
`step()`, so a plain step is correct; `distributed=True` additionally splits the Newton-Schulz
work across ranks (each rank orthogonalises every world_size-th matrix, then all-gathers).

Example:
    >>> import torch
    >>> net = torch.nn.ModuleDict({"blocks": torch.nn.Linear(8, 8, bias=False)})
    >>> opt = MuonAdamW([dict(kind="muon", params=list(net.parameters()), lr=0.02)])
    >>> net.blocks.weight.sum().backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lrt.schedule import lr_multiplier, muon_momentum

__all__ = [
    "MuonAdamW",
    "build_optimizer",
    "lr_multiplier",
    "muon_momentum",
    "param_groups",
    "unwrap_model",
    "zeropower_via_newtonschulz",
]

# Quintic Newton-Schulz coefficients (Keller Jordan / nanochat). They maximise the slope at 0 so
# five steps suffice; the price is that singular values land in [0.68, 1.21] (for inputs above
# 2e-3 of the Frobenius norm) instead of exactly 1, which does not hurt training. Polar Express coefficients (nanochat, 2026) converge
# tighter; rejected here to keep one well-studied iteration.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


# -----------------------------------------------------------------------------
# Orthogonalisation


def zeropower_via_newtonschulz(G: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """Approximate U V^T for G = U S V^T (batched over leading dims) by a quintic iteration.

    Runs in bfloat16 on CUDA (stable there and tensor-core fast) and float32 elsewhere. The
    result has G's singular vectors; singular values of G above 2e-3 of its Frobenius norm map
    into [0.68, 1.21] (smaller ones are scaled up by up to 3.4445^steps but stay below that).

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
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the small one
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


# -----------------------------------------------------------------------------
# The combined optimizer


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with `kind="muon"`, AdamW for groups with `kind="adamw"`.

    Group keys (defaults in brackets):
        muon:  lr, momentum [0.95], nesterov [True], ns_steps [5], weight_decay [0.0]
        adamw: lr, betas [(0.8, 0.95)], eps [1e-10], weight_decay [0.0]
        both:  name [kind], initial_lr [lr], initial_weight_decay [weight_decay] (the bases
               `set_schedule` multiplies)

    Muon's effective step for a (rows, cols) matrix is `lr * max(1, rows/cols) ** 0.5`
    (nanochat), so the update's RMS does not shrink for tall matrices. Weight decay is
    decoupled (`p *= 1 - lr * wd`) for both kinds.

    Args:
        params: List of group dicts (each with a `kind`).
        distributed: Split Newton-Schulz across the ranks of the default process group.
            Gradients must already be identical on every rank (DDP, or an all-reduce).
    """

    def __init__(self, params: Iterable[dict[str, Any]], *, distributed: bool = False) -> None:
        groups = []
        for group in params:
            group = dict(group)
            kind = group.get("kind")
            if kind == "muon":
                group.setdefault("momentum", 0.95)
                group.setdefault("nesterov", True)
                group.setdefault("ns_steps", NS_STEPS)
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
            >>> # opt.set_schedule(lr_multiplier(step, n), muon_momentum(step), 1 - step / n)
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
        # Nesterov momentum per matrix; state stays per parameter so checkpoints and DDP
        # replicas stay simple. The elementwise work runs as multi-tensor (`_foreach`) kernels
        # over all matrices at once, and same-shape updates are stacked for the iteration: a
        # d12 model has 72 matrices, and per-matrix kernels made the step launch-bound.
        for p in params:
            if not self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1.0 - mom)
        updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs

        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[tuple(p.shape)].append(i)
        for shape, idx in by_shape.items():
            group_params = [params[i] for i in idx]
            ortho = self._orthogonalise([updates[i] for i in idx], group["ns_steps"])
            scale = lr * max(1.0, shape[0] / shape[1]) ** 0.5
            if wd:
                torch._foreach_mul_(group_params, 1.0 - lr * wd)
            torch._foreach_add_(group_params, ortho, alpha=-scale)

    def _orthogonalise(self, mats: list[Tensor], steps: int) -> list[Tensor]:
        """Newton-Schulz on a list of same-shape matrices (batched; split across ranks if asked),
        returned in the matrices' dtype (one cast for the whole stack)."""
        if not self.distributed or dist.get_world_size() == 1:
            out = zeropower_via_newtonschulz(torch.stack(mats), steps).to(mats[0].dtype)
            return list(out.unbind(0))
        world, rank = dist.get_world_size(), dist.get_rank()
        n = len(mats)
        per_rank = -(-n // world)  # ceil
        padded = mats + [torch.zeros_like(mats[0])] * (per_rank * world - n)
        mine = torch.stack(padded[rank * per_rank : (rank + 1) * per_rank])
        out = zeropower_via_newtonschulz(mine, steps).to(mats[0].dtype).contiguous()
        # list all_gather rather than all_gather_into_tensor: gloo (CPU tests) lacks the latter
        chunks = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(chunks, out)
        return list(torch.cat(chunks)[:n].unbind(0))


# -----------------------------------------------------------------------------
# Grouping a model's parameters


def unwrap_model(model: nn.Module) -> nn.Module:
    """The LRT inside torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Classify every parameter of an LRT model by how it is optimised.

    Returns a dict with keys "matrix" (2-D weights of nn.Linear layers inside `model.blocks`
    and `model.pathway`, plus any other 2-D non-embedding, non-head weight), "embedding"
    (`nn.Embedding` weights, e.g. `model.wte`), "lm_head" and "scalar" (0-/1-D tensors).
    Each parameter appears exactly once (shared parameters are counted once).

    Example:
        >>> groups = param_groups(torch.nn.ModuleDict({"blocks": torch.nn.Linear(4, 4)}))
        >>> [name for name, _ in groups["matrix"]], [name for name, _ in groups["scalar"]]
        (['blocks.weight'], ['blocks.bias'])
    """
    model = unwrap_model(model)
    lm_head = getattr(model, "lm_head", None)
    head_ids = {id(p) for p in lm_head.parameters()} if isinstance(lm_head, nn.Module) else set()
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {
        "matrix": [],
        "embedding": [],
        "lm_head": [],
        "scalar": [],
    }
    for name, p in model.named_parameters():  # deduplicates shared parameters
        if id(p) in head_ids:
            groups["lm_head"].append((name, p))
        elif id(p) in embed_ids:
            groups["embedding"].append((name, p))
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
) -> MuonAdamW:
    """nanochat's optimizer recipe for an LRT model (baseline or with a pathway).

    Groups: Muon over every 2-D block/pathway matrix (`matrix_lr`, `weight_decay`); AdamW over
    the embedding (`embedding_lr`), the head (`unembedding_lr`), both times
    (n_embd/768)^-0.5, and over scalars (`scalar_lr`, unscaled, as nanochat). AdamW groups
    use no weight decay, as nanochat.

    Args:
        model: An `lrt.LRT` (or any module with `lm_head` / `nn.Embedding` / 2-D matrices).
        distributed: Split Newton-Schulz across DDP ranks (see `MuonAdamW`).

    Example:
        >>> # opt = build_optimizer(model); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    """
    model = unwrap_model(model)
    groups = param_groups(model)
    d_model = _model_dim(model)
    scale = (d_model / 768) ** -0.5
    spec = [
        dict(kind="adamw", name="lm_head", lr=unembedding_lr * scale, betas=betas),
        dict(kind="adamw", name="embedding", lr=embedding_lr * scale, betas=betas),
        dict(kind="adamw", name="scalar", lr=scalar_lr, betas=betas),
        dict(
            kind="muon", name="matrix", lr=matrix_lr, momentum=momentum, weight_decay=weight_decay
        ),
    ]
    built = []
    for g in spec:
        ps = [p for _, p in groups[g["name"]]]
        if ps:
            built.append({**g, "params": ps})
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
