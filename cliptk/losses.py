"""Contrastive losses for paired embeddings (query/positive images, or image/text).

Every loss here has one call signature::

    loss(a, b, logit_scale, ids=None, **extra) -> scalar tensor

- ``a``, ``b``: ``[B, D]`` embeddings of two views; row ``i`` of ``a`` and row ``i`` of ``b`` are a
  positive pair (query and positive image in CLIP-ReIdent, or image and caption). They are
  **L2-normalised inside** the loss, so raw encoder outputs can be passed.
- ``logit_scale``: the multiplier of the cosine similarities (``exp`` of a learnable log-scale, see
  :class:`LogitScale`, or ``1 / temperature``), a float or a scalar tensor.
- ``ids``: ``[B]`` identity labels, used by the losses that know about several positives per row
  (:class:`SupCon`, :class:`DecoupledSoftmax`); the others ignore it.
- ``extra``: loss-specific frozen inputs, named in each class's ``extras`` attribute
  (``teacher=`` or ``targets=`` for :class:`SoftTargetInfoNCE`, ``guide=`` for
  :class:`GuidedInfoNCE`); ``requires`` names those a caller must compute for every batch. An
  extra the loss does not know raises ``TypeError``, so a misspelt config cannot be silently
  ignored.

With ``gather=True`` each rank of a ``torch.distributed`` job computes the loss of its **local rows
against the global columns** (all ranks' embeddings, gathered with gradients by
:func:`gather_with_grad`). The mean of the per-rank losses equals the single-process loss on the
global batch, and after DDP averages the gradients over ranks they equal the single-process
gradients too (``tests/test_distributed.py`` checks both). For InfoNCE this is open_clip's
``ClipLoss(local_loss=True, gather_with_grad=True)``: memory grows as B x (B * world) rather than
(B * world)^2. All ranks must hold the same batch size.

Use :func:`make_loss` to build a loss from its name in the registry :data:`LOSSES` (``"infonce"``,
``"supcon"``, ``"decoupled"``, ``"soft"``, ``"gist"``), e.g. from a YAML config.

**Adding a loss**: subclass :class:`ContrastiveLoss`, implement its one method ``loss(v, scale,
extra)`` on a :class:`Views` of the batch, and register the class with :func:`register_loss`;
its docstring has a worked example. :class:`LogitScale` holds CLIP's learnable temperature.

Example:
    >>> import torch
    >>> from cliptk.losses import LogitScale, make_loss
    >>> a, b = torch.randn(8, 32), torch.randn(8, 32)
    >>> scale = LogitScale()                      # learnable, starts at 1/0.07
    >>> loss = make_loss("infonce", label_smoothing=0.1)(a, b, scale())
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._util import world
from .gather import gather_no_grad, gather_with_grad

__all__ = ["ContrastiveLoss", "Views", "register_loss", "LOSSES", "make_loss", "InfoNCE", "SupCon",
           "DecoupledSoftmax", "SoftTargetInfoNCE", "GISTFilter", "GuidedInfoNCE", "LogitScale", "gather_with_grad"]


# --------------------------------------------------------------------------- the base class
@dataclass
class Views:
    """One batch as a loss sees it, built by :meth:`ContrastiveLoss.forward`: L2-normalised local rows and
    the global columns of all ranks (the local rows again without ``gather=True``). Scoring the local rows
    against the global columns, each row's positive at :attr:`diag`, keeps a loss exact under ``gather``.

    Example:
        >>> e = torch.eye(3)
        >>> Views(e, e, e, e, torch.arange(3), torch.arange(3), 0).diag
        tensor([0, 1, 2])
    """

    a: Tensor  # [B, D] local rows of view a; row i of a and row i of b are a positive pair
    b: Tensor  # [B, D] local rows of view b
    ga: Tensor  # [N, D] global columns: all ranks' a, with gradients (ga is a without gather)
    gb: Tensor  # [N, D] all ranks' b
    ids: Tensor  # [B] identity labels of the local rows (every row its own when ids=None)
    gids: Tensor  # [N] identity labels of the global columns
    offset: int  # global column of local row 0 (rank * B)

    @property
    def diag(self) -> Tensor:
        """Global column index of each local row's own positive, ``[B]``."""
        return torch.arange(self.a.shape[0], device=self.a.device) + self.offset


def _as_scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    s = torch.as_tensor(logit_scale, dtype=like.dtype, device=like.device)
    if s.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(s.shape)}")
    return s.reshape(())


def _frozen_pair(value: Any, name: str, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Accept ``(ea, eb)`` or a single tensor ``e`` (meaning ``(e, e)``); detach, cast, normalise."""
    ea, eb = (value, value) if isinstance(value, Tensor) else value
    for e in (ea, eb):
        if e.ndim != 2 or e.shape[0] != n:
            raise ValueError(f"{name} embeddings must be [B={n}, D'], got {tuple(e.shape)}")
    dtype = torch.promote_types(like.dtype, torch.float32)  # guide margins need more than fp16/bf16
    ea, eb = (e.detach().to(device=like.device, dtype=dtype) for e in (ea, eb))
    return F.normalize(ea, dim=-1), F.normalize(eb, dim=-1)


class ContrastiveLoss(nn.Module):
    """Base class of every loss here, and the way to add one: implement :meth:`loss`, register it.

    :meth:`forward` is the fixed wrapper (do not override it): it rejects extra inputs not named in
    ``extras``, checks shapes, L2-normalises ``a`` and ``b``, gathers all ranks' columns when ``gather=True``
    and calls :meth:`loss` with a :class:`Views` and the logit scale as a 0-d tensor. So a new loss writes
    only its formula. To add one:

    1. subclass :class:`ContrastiveLoss` and implement ``loss(self, v, scale, extra)`` returning a scalar
       (constructor options go in ``__init__``, which passes ``gather`` on to ``super().__init__``);
    2. set the class attributes it needs: ``needs_ids = True`` if it uses ``v.ids`` / ``v.gids``; ``extras``,
       the extra keyword inputs it accepts (handed to :meth:`loss` in ``extra``, not gathered);
       ``requires``, those a caller must compute for every batch (``cliptk.fit`` makes none, so it refuses
       such a loss; the lab passes its guide features as ``guide=`` / ``teacher=``);
    3. register it with :func:`register_loss`: the name joins :data:`LOSSES`, so :func:`make_loss`,
       ``TrainConfig(loss=...)`` and ``cliptk.lab.LabMethod(loss=...)`` accept it.

    Example (InfoNCE in one direction only, ``a → b``):
        >>> @register_loss("a2b")
        ... class OneWayInfoNCE(ContrastiveLoss):
        ...     def loss(self, v, scale, extra):
        ...         logits = scale * v.a @ v.gb.T   # local rows against global columns
        ...         return F.cross_entropy(logits, v.diag)
        >>> loss_fn = make_loss("a2b")
        >>> round(loss_fn(torch.eye(4), torch.eye(4), 10.0).item(), 6)
        0.000136
        >>> "a2b" in LOSSES, loss_fn.requires
        (True, ())
        >>> del LOSSES["a2b"]   # (LOSSES is a plain dict; the example tidies up after itself)
    """

    needs_ids: bool = False
    extras: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def __init__(self, gather: bool = False) -> None:
        super().__init__()
        self.gather = gather

    def forward(
        self, a: Tensor, b: Tensor, logit_scale: Tensor | float, ids: Tensor | None = None, **extra: Any
    ) -> Tensor:
        """The loss of ``B`` pairs (arguments: see the module docstring). Raises ``TypeError`` for an extra
        input not in ``extras``, ``ValueError`` for mismatched shapes or a non-scalar ``logit_scale``."""
        unknown = set(extra) - set(self.extras)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected extra input(s) {sorted(unknown)}; "
                            f"it accepts {list(self.extras) or 'none'}")
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(f"a and b must both be [B, D] with equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        n = a.shape[0]
        rank, n_ranks = world() if self.gather else (0, 1)
        if ids is None:
            ids = torch.arange(n, device=a.device) + rank * n  # every row its own identity
        else:
            ids = torch.as_tensor(ids, device=a.device).reshape(-1)
            if ids.shape[0] != n:
                raise ValueError(f"ids must have B={n} entries, got {ids.shape[0]}")
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        if n_ranks > 1:
            v = Views(a, b, gather_with_grad(a), gather_with_grad(b), ids, gather_no_grad(ids), rank * n)
        else:
            v = Views(a, b, a, b, ids, ids, 0)
        return self.loss(v, _as_scale(logit_scale, a), extra)

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        """The one method a loss implements: a scalar from the batch's :class:`Views` ``v``, the logit
        ``scale`` (0-d, the embeddings' dtype) and the ``extra`` inputs (keys within ``extras``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(self, v, scale, extra)")

    def extra_repr(self) -> str:
        return f"gather={self.gather}"


# --------------------------------------------------------------------------- registry
LOSSES: dict[str, type[ContrastiveLoss]] = {}
"""The one registry of loss names, ``name -> class``, filled by :func:`register_loss` (built in: infonce,
supcon, decoupled, soft, gist). Every list of loss names in cliptk reads it."""


def register_loss(name: str, cls: type[ContrastiveLoss] | None = None, *, replace: bool = False):
    """Add a :class:`ContrastiveLoss` subclass to :data:`LOSSES` under ``name`` (lower-cased).

    A class decorator (``@register_loss("mine")``) or a call (``register_loss("mine", Mine)``); returns the
    class. Registering a class of the same module and name again (a re-run notebook cell) replaces it.
    Example: see :class:`ContrastiveLoss`.

    Raises:
        TypeError: ``cls`` is not a :class:`ContrastiveLoss` subclass that implements ``loss``.
        ValueError: an empty name, a name taken by another class (unless ``replace=True``), or
            ``requires`` naming an input that is not in ``extras``.
    """

    def add(c: type[ContrastiveLoss]) -> type[ContrastiveLoss]:
        key = str(name).lower().strip()
        if not key:
            raise ValueError("register_loss: the loss name must not be empty")
        if not (isinstance(c, type) and issubclass(c, ContrastiveLoss)) or c.loss is ContrastiveLoss.loss:
            raise TypeError(f"register_loss({name!r}): {c!r} must subclass cliptk.losses.ContrastiveLoss "
                            "and implement loss(self, v, scale, extra)")
        stray = [r for r in c.requires if r not in c.extras]
        if stray:
            raise ValueError(f"register_loss({name!r}): {c.__name__}.requires names {stray}, which are not in "
                             f"its extras {list(c.extras)}; forward() would reject them")
        old = LOSSES.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__) and not replace:
            raise ValueError(f"register_loss: {key!r} is already {old.__module__}.{old.__qualname__}; "
                             "choose another name or pass replace=True")
        LOSSES[key] = c
        return c

    return add if cls is None else add(cls)


# --------------------------------------------------------------------------- losses
@register_loss("infonce")
class InfoNCE(ContrastiveLoss):
    """Symmetric InfoNCE / CLIP loss ``½[CE(S, I) + CE(Sᵀ, I)]`` with ``S = scale · â b̂ᵀ``.

    The loss of CLIP (Radford et al., ICML 2021) as used for player re-identification by
    CLIP-ReIdent (Habel et al., MMSports 2022), including its label smoothing of 0.1. Rows of ``a``
    and ``b`` are L2-normalised inside; ``ids`` is ignored (every other row is a negative, so use a
    unique-identity sampler such as :class:`cliptk.samplers.UniqueIdPairSampler`).

    Args:
        label_smoothing: ε of ``torch.nn.functional.cross_entropy`` (0 = plain InfoNCE).
        gather: compute local rows against all ranks' columns (see module docstring).

    Example:
        >>> InfoNCE(label_smoothing=0.0)(torch.eye(4), torch.eye(4), 10.0) < 0.01
        tensor(True)
    """

    def __init__(self, label_smoothing: float = 0.1, gather: bool = False) -> None:
        super().__init__(gather)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        la, lb = scale * v.a @ v.gb.T, scale * v.b @ v.ga.T
        eps = self.label_smoothing
        return 0.5 * (F.cross_entropy(la, v.diag, label_smoothing=eps) + F.cross_entropy(lb, v.diag, label_smoothing=eps))

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, gather={self.gather}"


@register_loss("supcon")
class SupCon(ContrastiveLoss):
    """Supervised contrastive loss with several positives per row (Khosla et al., NeurIPS 2020).

    ``L_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip) / Σ_{k∈A(i)} exp(s_ik) )`` with ``s = scale·cos``
    and ``P(i)`` the candidates sharing row ``i``'s identity (``ids``; ``ids=None`` makes every row
    its own identity).

    Two candidate sets, chosen by ``views``:

    - ``"cross"`` (default): rows of ``a`` against columns of ``b`` and vice versa, averaged over
      both directions like :class:`InfoNCE`. ``A(i)`` is all of ``b``, ``P(i) = {j : id_j = id_i}``
      (which includes ``b_i``). With one positive per row it equals InfoNCE without smoothing,
      so it is a drop-in for CLIP-ReIdent batches and for image-text pairs.
    - ``"all"``: the paper's original form on the ``2B`` views ``[a; b]``: ``A(i)`` is every
      other view, ``P(i)`` every other view of the same identity (with unique ids this is
      SimCLR's NT-Xent, not InfoNCE).

    Example:
        >>> ids = torch.tensor([0, 0, 1, 1])
        >>> SupCon()(torch.randn(4, 8), torch.randn(4, 8), 10.0, ids=ids).ndim
        0
    """

    needs_ids = True

    def __init__(self, views: Literal["cross", "all"] = "cross", gather: bool = False) -> None:
        super().__init__(gather)
        if views not in ("cross", "all"):
            raise ValueError(f"views must be 'cross' or 'all', got {views!r}")
        self.views = views

    @staticmethod
    def _rows(logits: Tensor, pos: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, dim=1)
        return -torch.where(pos, logp, 0.0).sum(1) / pos.sum(1)

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        pos = v.ids[:, None] == v.gids[None, :]
        if self.views == "cross":
            la, lb = scale * v.a @ v.gb.T, scale * v.b @ v.ga.T
            return 0.5 * (self._rows(la, pos).mean() + self._rows(lb, pos).mean())
        rows, cols = torch.cat([v.a, v.b]), torch.cat([v.ga, v.gb])
        n = v.ga.shape[0]
        self_col = torch.cat([v.diag, v.diag + n])
        is_self = torch.zeros(rows.shape[0], cols.shape[0], dtype=torch.bool, device=rows.device)
        is_self[torch.arange(rows.shape[0]), self_col] = True
        logits = (scale * rows @ cols.T).masked_fill(is_self, float("-inf"))
        pos2 = pos.repeat(2, 2) & ~is_self
        return self._rows(logits, pos2).mean()

    def extra_repr(self) -> str:
        return f"views={self.views!r}, gather={self.gather}"


@register_loss("decoupled")
class DecoupledSoftmax(ContrastiveLoss):
    """Decoupled softmax over multiple positives, from DEXML (Gupta et al., ICLR 2024).

    ``L_i = -1/|P(i)| Σ_{p∈P(i)} log( e^{s_ip} / (e^{s_ip} + Σ_{n∉P(i)} e^{s_in}) )``: each positive
    competes only with the negatives, not with the row's other positives (which SupCon's
    denominator keeps). Symmetric over ``a→b`` and ``b→a`` like :class:`InfoNCE`; equal to it
    (without smoothing) when every row has one positive. Computed stably as
    ``softplus(logsumexp_negatives − s_ip)``; a row without negatives contributes 0.

    Example:
        >>> ids = torch.tensor([0, 0, 1, 1])
        >>> DecoupledSoftmax()(torch.randn(4, 8), torch.randn(4, 8), 10.0, ids=ids).ndim
        0
    """

    needs_ids = True

    @staticmethod
    def _rows(logits: Tensor, pos: Tensor) -> Tensor:
        neg_lse = torch.logsumexp(logits.masked_fill(pos, float("-inf")), dim=1, keepdim=True)
        per_pair = F.softplus(neg_lse - logits)
        return torch.where(pos, per_pair, 0.0).sum(1) / pos.sum(1)

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        pos = v.ids[:, None] == v.gids[None, :]
        la, lb = scale * v.a @ v.gb.T, scale * v.b @ v.ga.T
        return 0.5 * (self._rows(la, pos).mean() + self._rows(lb, pos).mean())


@register_loss("soft")
class SoftTargetInfoNCE(ContrastiveLoss):
    """Soft-target InfoNCE of CWCL (Srinivasa et al., NeurIPS 2023), symmetric.

    ``L = ½[-1/B Σ_i Σ_j t_ij log softmax_j(s_ij) − 1/B Σ_i Σ_j t'_ij log softmax_j(s_ji)]`` where
    the rows of the targets sum to one. Give the targets one of two ways:

    - ``teacher=(ta, tb)``: frozen-encoder embeddings ``[B, D']`` of the two views (e.g. the
      zero-shot CLIP before fine-tuning); ``t_ij ∝ (1 + cos(ta_i, tb_j)) / 2`` for the ``a→b``
      direction and ``t'_ij ∝ (1 + cos(tb_i, ta_j)) / 2`` for ``b→a``. CWCL's intra-modal weights
      are ``teacher=q`` (one tensor, meaning ``(q, q)``) with ``q`` from the frozen modality.
    - ``targets=T``: a non-negative ``[N, N]`` matrix over the (global) batch, rows = ``a``,
      columns = ``b``; rows are normalised inside, ``b→a`` uses ``Tᵀ``. ``T = I`` gives InfoNCE.

    The CWCL weights are very flat (every pair gets at least a little mass); sharpen them by
    passing your own ``targets``. Teacher embeddings are detached.

    Example:
        >>> a, b = torch.randn(4, 8), torch.randn(4, 8)
        >>> SoftTargetInfoNCE()(a, b, 10.0, teacher=(a, b)).ndim
        0
    """

    extras = ("teacher", "targets")
    requires = ("teacher",)  # (or targets= in its place): frozen inputs per batch a training loop must make

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        n_local, n_global = v.a.shape[0], v.ga.shape[0]
        if ("teacher" in extra) == ("targets" in extra):
            raise TypeError("SoftTargetInfoNCE needs exactly one of teacher=(ta, tb) or targets=[N, N] matrix")
        if "teacher" in extra:
            ta, tb = _frozen_pair(extra["teacher"], "teacher", n_local, v.a)
            if self.gather:
                gta, gtb = gather_no_grad(ta), gather_no_grad(tb)
            else:
                gta, gtb = ta, tb
            wa, wb = (1 + ta @ gtb.T) / 2, (1 + tb @ gta.T) / 2
        else:
            t = torch.as_tensor(extra["targets"], dtype=v.a.dtype, device=v.a.device)
            if t.shape != (n_global, n_global):
                raise ValueError(f"targets must be [N, N] over the global batch, N={n_global}; got {tuple(t.shape)}")
            if (t < 0).any():
                raise ValueError("targets must be non-negative")
            rows = slice(v.offset, v.offset + n_local)
            wa, wb = t[rows], t.T[rows]
        wa, wb = wa.to(v.a.dtype), wb.to(v.a.dtype)
        if (wa.sum(1) <= 0).any() or (wb.sum(1) <= 0).any():
            raise ValueError("a target row sums to zero; every row needs some mass")
        wa, wb = wa / wa.sum(1, keepdim=True), wb / wb.sum(1, keepdim=True)
        la, lb = scale * v.a @ v.gb.T, scale * v.b @ v.ga.T
        return 0.5 * (F.cross_entropy(la, wa) + F.cross_entropy(lb, wb))


class GISTFilter:
    """Guide-model false-negative mask of GISTEmbed (Solatorio, 2024).

    Given guide similarities ``g`` ([B, N]) and the guide similarity of each row's own positive
    ``g_pos`` ([B]), a candidate ``j`` is masked as a likely false negative when
    ``g_ij > g_pos_i − margin`` (``strategy="absolute"``) or ``g_ij > g_pos_i · (1 − margin)``
    (``"relative"``). Calling the filter on two frozen embedding sets returns the mask of the
    ``B × B`` cross block with the diagonal (the true positives) never masked.

    Args:
        margin: how far below the positive's guide similarity a negative must stay to be kept;
            larger margins mask more.
        strategy: ``"absolute"`` or ``"relative"``.

    Example:
        >>> g = torch.nn.functional.normalize(torch.tensor([[1., 0.], [1., 0.1], [0., 1.]]), dim=1)
        >>> GISTFilter(margin=0.1)(g, g)   # rows 0 and 1 look like the same identity
        tensor([[False,  True, False],
                [ True, False, False],
                [False, False, False]])
    """

    def __init__(self, margin: float = 0.0, strategy: Literal["absolute", "relative"] = "absolute") -> None:
        if strategy not in ("absolute", "relative"):
            raise ValueError(f"strategy must be 'absolute' or 'relative', got {strategy!r}")
        self.margin, self.strategy = float(margin), strategy

    def mask(self, g: Tensor, g_pos: Tensor) -> Tensor:
        """Boolean [B, N] mask of candidates to drop; does not treat the diagonal specially."""
        bar = g_pos - self.margin if self.strategy == "absolute" else g_pos * (1.0 - self.margin)
        return g > bar[:, None]

    def __call__(self, ga: Tensor, gb: Tensor) -> Tensor:
        ga, gb = _frozen_pair((ga, gb), "guide", ga.shape[0], ga.float())
        g = ga @ gb.T
        m = self.mask(g, g.diagonal())
        m.fill_diagonal_(False)
        return m

    def __repr__(self) -> str:
        return f"GISTFilter(margin={self.margin}, strategy={self.strategy!r})"


@register_loss("gist")
class GuidedInfoNCE(ContrastiveLoss):
    """InfoNCE with GISTEmbed's guided in-batch negative filtering (Solatorio, 2024).

    A frozen guide model (e.g. the zero-shot CLIP, cached) scores every pair; in-batch negatives
    the guide rates at least as similar as the true positive (:class:`GISTFilter`) are removed
    from the softmax (logit set to −inf) before the symmetric InfoNCE of :class:`InfoNCE`. Works
    without identity labels. With ``within=True`` the ``a``–``a`` and ``b``–``b`` blocks are added
    as extra (filtered) negatives, as sentence-transformers' ``GISTEmbedLoss`` does; self-pairs are
    always removed there.

    Pass ``guide=(ga, gb)`` frozen embeddings ``[B, D']`` of the two views. After each call,
    ``last_mask_rate`` holds the fraction of cross-block off-diagonal negatives that were masked
    and ``last_mask`` the ``[B, N]`` boolean mask of the ``a→b`` block (for precision/recall
    against true identities).

    Example:
        >>> a, b = torch.randn(4, 8), torch.randn(4, 8)
        >>> loss = GuidedInfoNCE(margin=0.1)
        >>> _ = loss(a, b, 10.0, guide=(a, b)); 0.0 <= loss.last_mask_rate <= 1.0
        True
    """

    extras = ("guide",)
    requires = ("guide",)

    def __init__(self, margin: float = 0.0, strategy: Literal["absolute", "relative"] = "absolute",
                 within: bool = False, gather: bool = False) -> None:
        super().__init__(gather)
        self.filter = GISTFilter(margin, strategy)
        self.within = within
        self.last_mask_rate: float = float("nan")
        self.last_mask: Tensor | None = None

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        if "guide" not in extra:
            raise TypeError("GuidedInfoNCE needs guide=(ga, gb): frozen guide-model embeddings of a and b")
        n_local = v.a.shape[0]
        ga, gb = _frozen_pair(extra["guide"], "guide", n_local, v.a)
        gga, ggb = (gather_no_grad(ga), gather_no_grad(gb)) if self.gather else (ga, gb)
        rows = torch.arange(n_local, device=v.a.device)
        diag = v.diag
        g_pos = (ga * gb).sum(1)
        is_pos = torch.zeros(n_local, gga.shape[0], dtype=torch.bool, device=v.a.device)
        is_pos[rows, diag] = True
        neg_inf = float("-inf")

        def block(x: Tensor, cols: Tensor, gx: Tensor, gcols: Tensor, keep_diag: bool) -> tuple[Tensor, Tensor]:
            mask = self.filter.mask(gx @ gcols.T, g_pos)
            mask = mask & ~is_pos if keep_diag else mask | is_pos
            return (scale * x @ cols.T).masked_fill(mask, neg_inf), mask

        la, mask_ab = block(v.a, v.gb, ga, ggb, keep_diag=True)
        lb, _ = block(v.b, v.ga, gb, gga, keep_diag=True)
        if self.within:
            la = torch.cat([la, block(v.a, v.ga, ga, gga, keep_diag=False)[0]], dim=1)
            lb = torch.cat([lb, block(v.b, v.gb, gb, ggb, keep_diag=False)[0]], dim=1)
        n_neg = mask_ab.numel() - n_local
        self.last_mask = mask_ab.detach()
        self.last_mask_rate = float(mask_ab.sum()) / n_neg if n_neg else 0.0
        return 0.5 * (F.cross_entropy(la, diag) + F.cross_entropy(lb, diag))

    def extra_repr(self) -> str:
        return f"filter={self.filter!r}, within={self.within}, gather={self.gather}"


# --------------------------------------------------------------------------- temperature
class LogitScale(nn.Module):
    """Holds ``log(scale)`` and returns the logit scale ``exp(log_scale)`` clamped to ``max_scale``.

    As in CLIP (Radford et al., 2021): initialised to ``1/0.07`` and learnable, with the scale
    kept at most 100 "to prevent training instability". The forward pass clamps the value; call
    :meth:`clamp_` after ``optimizer.step()`` to clamp the parameter itself into
    ``[log(min_scale), log(max_scale)]`` as open_clip does, so that it can move back down.
    ``learnable=False`` gives a fixed temperature ``1/init`` (a buffer, not a parameter).

    Raises:
        ValueError: if ``init`` is not within ``[min_scale, max_scale]`` or a bound is not positive.

    Example:
        >>> s = LogitScale(init=1 / 0.07)
        >>> round(s().item(), 3), round(s.temperature, 3)
        (14.286, 0.07)
    """

    def __init__(
        self, init: float = 1 / 0.07, learnable: bool = True, max_scale: float = 100.0, min_scale: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}")
        if not min_scale <= init <= max_scale:
            raise ValueError(
                f"init={init} is outside [min_scale={min_scale}, max_scale={max_scale}]; "
                "widen the bounds or pick another initial scale (1/temperature)"
            )
        self.max_scale, self.min_scale, self.learnable = float(max_scale), float(min_scale), learnable
        value = torch.tensor(math.log(init))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(math.log(self.min_scale), math.log(self.max_scale)).exp()

    @torch.no_grad()
    def clamp_(self) -> LogitScale:
        """Clamp the stored log-scale in place (call after each optimiser step)."""
        self.log_scale.clamp_(math.log(self.min_scale), math.log(self.max_scale))
        return self

    @property
    def temperature(self) -> float:
        """Current temperature ``1 / scale``."""
        return 1.0 / self().item()

    def extra_repr(self) -> str:
        return f"scale={self().item():.4g}, learnable={self.learnable}, range=[{self.min_scale:g}, {self.max_scale:g}]"


# --------------------------------------------------------------------------- by name
def make_loss(name: str, **kwargs: Any) -> ContrastiveLoss:
    """Build a loss by its :data:`LOSSES` name (case-insensitive), e.g. from a YAML config.

    Keyword arguments go to the class (e.g. ``label_smoothing``, ``gather``, ``margin``). The
    returned module has ``needs_ids`` (pass ``ids=``), ``extras`` (extra inputs it accepts) and
    ``requires`` (those it cannot do without).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        TypeError: for keyword arguments the loss does not take.

    Example:
        >>> make_loss("supcon", views="all")
        SupCon(views='all', gather=False)
        >>> make_loss("gist").requires
        ('guide',)
    """
    key = name.lower().strip()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[key](**kwargs)
