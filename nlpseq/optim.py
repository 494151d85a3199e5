"""Adam and AdamW for nlpseq's trainer: one native pass over a model's CPU tensors per step,
and lazy (row-sparse) updates for embedding tables.

Lazy updates: an ``nn.Embedding(sparse=True)`` gives its table a sparse gradient holding only
the rows a batch used; those rows and their moments are updated and every other row is left
as it is (the semantics of torch's ``SparseAdam`` and TensorFlow's ``LazyAdam``). Dense Adam
instead moves every row on every step, from momentum alone for the rows a batch did not use,
which for a 15k x 50 table is most of a step's optimizer time and memory traffic. Weight decay
likewise applies to the used rows only.
"""

from __future__ import annotations

import math

import torch
from torch.optim.adam import adam as torch_adam

from nlpseq import native


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` (``decoupled_weight_decay=True``: AdamW) that also takes sparse
    gradients (updated lazily, see the module docstring) and, for CPU float32 tensors where
    nlpseq's native library loads, runs each step as one call on all cores
    (``torch.ops.nlpseq.adam_step``). State and ``state_dict`` are torch's, so checkpoints
    move freely between the two."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # whatever saved it: a 0-d float32 CPU count
            if "step" in state:
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None, max_norm: float = 0.0):
        """One step (``closure`` as torch's). ``max_norm`` > 0 first clips the gradients of
        all groups to that global L2 norm, as ``clip_grad_norm_`` (on the native path inside
        the same call, without writing the clipped gradients back)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:  # as torch's Adam initialises it
                    self.state[p].update(
                        step=torch.tensor(0.0),
                        exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                        exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                    )
            if params:
                groups.append((group, params))
        everything = [p for _, params in groups for p in params]
        if (not native_ok(everything) or not all(p.is_contiguous() for p in everything)
                or any(g["amsgrad"] or g["maximize"] for g, _ in groups)):
            if max_norm > 0:
                clip_grads_(everything, max_norm)
            for group, params in groups:
                self._torch_step(group, params)
            return loss
        scale = 1.0
        if max_norm > 0 and len(groups) > 1:  # one norm over all groups, then each group
            norm = math.sqrt(torch.ops.nlpseq.sum_squares([p.grad for p in everything]))
            scale, max_norm = min(1.0, max_norm / (norm + 1e-6)), 0.0
        for group, params in groups:
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            torch.ops.nlpseq.adam_step(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
                grad_scale=scale, max_norm=max_norm,
            )
        return loss

    def _torch_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's kernels (CUDA, float16, no native library), on the used rows of tables
        with a sparse gradient."""
        states = [self.state[p] for p in params]
        grads = [p.grad.coalesce() if p.grad.is_sparse else p.grad for p in params]
        rows = [g._indices()[0] if g.is_sparse else None for g in grads]
        picked = [(p, s["exp_avg"], s["exp_avg_sq"]) if r is None else
                  (p[r], s["exp_avg"][r], s["exp_avg_sq"][r])
                  for p, s, r in zip(params, states, rows)]
        beta1, beta2 = group["betas"]
        torch_adam(
            [x[0] for x in picked], [g._values() if g.is_sparse else g for g in grads],
            [x[1] for x in picked], [x[2] for x in picked], [], [s["step"] for s in states],
            amsgrad=group["amsgrad"], maximize=group["maximize"], has_complex=False,
            decoupled_weight_decay=group["decoupled_weight_decay"], beta1=beta1, beta2=beta2,
            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        )
        for p, s, r, (pr, ar, sr) in zip(params, states, rows, picked):
            if r is not None:
                p[r], s["exp_avg"][r], s["exp_avg_sq"][r] = pr, ar, sr


def native_ok(tensors: list[torch.Tensor]) -> bool:
    """Whether nlpseq's native optimizer kernels can take ``tensors``: all CPU float32 and
    the library loads."""
    return (
        bool(tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and native.load()
    )


def clip_grads_(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale the gradients of ``params`` so that their global L2 norm is at most
    ``max_norm``, in place (as ``nn.utils.clip_grad_norm_``; a sparse gradient counts its
    rows once each).

    On CPU the norm is one native call and the multiply is skipped when nothing is clipped;
    elsewhere it always runs (by at most 1), which avoids a device sync.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    if native_ok(grads):
        scale = max_norm / (math.sqrt(torch.ops.nlpseq.sum_squares(grads)) + 1e-6)
        if scale < 1.0:
            torch._foreach_mul_([g._values() if g.is_sparse else g for g in grads], scale)
        return
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # each row once, so its values give the norm
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
