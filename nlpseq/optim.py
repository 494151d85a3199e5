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

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:  # as torch's Adam initialises it
                    self.state[p].update(
                        step=torch.tensor(0.0),
                        exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                        exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                    )
            states = [self.state[p] for p in params]
            tensors = ([p.grad for p in params], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
            self._update(group, params, *tensors)
        return loss

    def _update(self, group, params, grads, avgs, squares, steps) -> None:
        beta1, beta2 = group["betas"]
        if native_ok(params) and not group["amsgrad"] and not group["maximize"]:
            torch.ops.nlpseq.adam_step(
                params, grads, avgs, squares, steps, lr=float(group["lr"]), beta1=float(beta1),
                beta2=float(beta2), eps=group["eps"], weight_decay=group["weight_decay"],
                decoupled=group["decoupled_weight_decay"],
            )
            return
        # Elsewhere (CUDA, float16, no native library): torch's kernels, on the used rows of
        # tables with a sparse gradient.
        grads = [g.coalesce() if g.is_sparse else g for g in grads]  # each row once
        rows = [g._indices()[0] if g.is_sparse else None for g in grads]
        grads = [g._values() if g.is_sparse else g for g in grads]
        picked = [(p, a, s) if r is None else (p[r], a[r], s[r])
                  for p, a, s, r in zip(params, avgs, squares, rows)]
        torch_adam(
            [x[0] for x in picked], grads, [x[1] for x in picked], [x[2] for x in picked], [],
            steps, amsgrad=group["amsgrad"], maximize=group["maximize"], has_complex=False,
            decoupled_weight_decay=group["decoupled_weight_decay"], beta1=beta1, beta2=beta2,
            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        )
        for (p, a, s, r), (pr, ar, sr) in zip(zip(params, avgs, squares, rows), picked):
            if r is not None:
                p[r], a[r], s[r] = pr, ar, sr


def native_ok(tensors: list[torch.Tensor]) -> bool:
    """Whether nlpseq's native optimizer kernels can take ``tensors``: all CPU float32 and
    the library loads."""
    return (
        bool(tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and native.load()
    )

