"""Gather embeddings from every rank of a ``torch.distributed`` job, with or without gradients.

A contrastive loss over a global batch needs every rank's embeddings as columns; the gradient
must still flow back to the rank that computed each row. These are the two collectives the losses
use (open_clip's ``gather_features`` does the same with ``gather_with_grad=True``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._util import world

__all__ = ["gather_with_grad", "gather_no_grad"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ([n, ...]) from all ranks along dim 0, keeping the autograd graph.

    The backward pass sums each rank's gradient w.r.t. the gathered tensor over ranks and hands
    every rank the slice belonging to its own rows, so rank ``r`` receives
    ``d(sum_k loss_k) / d x_r``; DDP's gradient averaging then turns the per-rank mean losses into the
    gradient of the global mean loss. A no-op (returns ``x``) when ``torch.distributed`` is not
    initialised or the world has one process. Works with the ``gloo`` and ``nccl`` backends.

    Raises:
        ValueError: if the ranks hold different numbers of rows (all_gather needs equal shapes;
            use ``drop_last=True`` in the sampler).

    Example:
        >>> gather_with_grad(torch.ones(4, 8)).shape   # single process: unchanged
        torch.Size([4, 8])
    """
    _, n_ranks = world()
    if n_ranks == 1:
        return x
    _check_equal_rows(x.shape[0], n_ranks)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """all_gather without gradient (labels, frozen teacher/guide embeddings)."""
    _, n_ranks = world()
    if n_ranks == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(n_ranks)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _check_equal_rows(n: int, n_ranks: int) -> None:
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(n_ranks)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long))
    got = [int(s) for s in sizes]
    if len(set(got)) != 1:
        raise ValueError(f"gather=True needs the same batch size on every rank, got {got}; "
                         "use drop_last=True in the sampler / DataLoader.")
