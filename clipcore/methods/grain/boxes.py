"""Boxes for GRAIN (docs/methods.md, GRAIN §4): conversions, IoU / GIoU, the per-image Hungarian matcher and the box
loss.

Boxes are normalised to [0, 1]. The box head predicts ``(cx, cy, w, h)`` (sigmoid outputs); overlaps are computed
on ``(x1, y1, x2, y2)``. Every function broadcasts over leading dimensions, so the same code scores matched pairs
(``giou(a, b)`` on (M, 4) and (M, 4)) and all pairs (``giou(a[:, None], b[None])`` -> (N, M)).

    cost = match_cost(pred_boxes, tgt_boxes)                 # (B, Q, T): 5 L1 - 2 GIoU
    b, q, j = hungarian_match(cost, tgt_mask)                # matched (image, query, target) triples
    loss, parts = box_loss(pred_boxes, tgt_boxes, (b, q, j), n_targets=int(tgt_mask.sum()))
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

Match = tuple[Tensor, Tensor, Tensor]   # (image index, query index, target index), each (M,) long


# ----------------------------------------------------------------------------- conversions and overlaps
def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (x1, y1, x2, y2)."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    """(..., 4) (x1, y1, x2, y2) -> (..., 4) (cx, cy, w, h)."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def box_area(b: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area; a box with x2 < x1 or y2 < y1 has area 0."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def iou_and_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """xyxy boxes, broadcast: (..., 4), (..., 4) -> IoU (...) and union area (...)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=1e-12), union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """xyxy boxes, broadcast: (..., 4), (..., 4) -> IoU (...)."""
    return iou_and_union(a, b)[0]


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al. 2019), xyxy boxes, broadcast -> (...), in [-1, 1]:

    GIoU(a, b) = IoU(a, b) - |E minus (a union b)| / |E|,  E the smallest box enclosing a and b.
    """
    iou, union = iou_and_union(a, b)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    enclose = (rb - lt).clamp(min=0).prod(-1)
    return iou - (enclose - union) / enclose.clamp(min=1e-12)


# ----------------------------------------------------------------------------- matching
@torch.no_grad()
def match_cost(pred: Tensor, target: Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0) -> Tensor:
    """The matcher's cost (docs/methods.md, GRAIN §4), box-only: C_kj = 5 ||b_k - b_j||_1 - 2 GIoU(b_k, b_j).

    pred (B, Q, 4), target (B, T, 4), both (cx, cy, w, h) -> (B, Q, T). L1 on cxcywh, GIoU on xyxy.
    """
    l1 = (pred[:, :, None, :] - target[:, None, :, :]).abs().sum(-1)
    g = giou(cxcywh_to_xyxy(pred)[:, :, None, :], cxcywh_to_xyxy(target)[:, None, :, :])
    return l1_weight * l1 - giou_weight * g


@torch.no_grad()
def hungarian_match(cost: Tensor, target_mask: Tensor) -> Match:
    """Per-image optimal assignment of queries to valid targets (scipy ``linear_sum_assignment``).

    cost (B, Q, T); target_mask (B, T) bool, True for real targets. Every valid target gets one query when
    n_i <= Q (otherwise Q of them are matched); leftover queries get no target. Returns (image, query, target)
    index tensors (M,), M = sum_i min(n_i, Q), ordered by image then query. No gradient flows through it.
    """
    c = cost.detach().float().cpu().numpy()
    mask = target_mask.cpu().numpy()
    bs, qs, ts = [], [], []
    for i in range(c.shape[0]):
        valid = np.flatnonzero(mask[i])
        if valid.size == 0:
            continue
        rows, cols = linear_sum_assignment(c[i][:, valid])
        bs.append(np.full(rows.size, i))
        qs.append(rows)
        ts.append(valid[cols])
    if not bs:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty, empty
    return tuple(torch.as_tensor(np.concatenate(x), dtype=torch.long, device=cost.device) for x in (bs, qs, ts))


# ----------------------------------------------------------------------------- loss
def box_loss(pred: Tensor, target: Tensor, match: Match, n_targets: int, scale: float = 1.5
             ) -> tuple[Tensor, dict[str, float]]:
    """L_box = scale / N_b * sum over matched (i, k, j) of [ ||b_ik - b_ij||_1 + 1 - GIoU(b_ik, b_ij) ].

    pred (B, Q, 4) and target (B, T, 4) in cxcywh; match from :func:`hungarian_match`; n_targets = N_b, the
    number of target boxes in the local batch. scale 1.5 is the official code's effective weight (its L1 and
    GIoU weights of 1 divided by len(weight_dict) / 3 = 2/3); 1 is the paper-style weight. N_b = 0 gives an
    exact 0 that still carries a (zero) gradient to ``pred``. Returns (loss, {"l1", "giou"} as per-box means).
    """
    b, q, j = match
    if n_targets == 0 or b.numel() == 0:
        zero = pred.sum() * 0.0
        return zero, {"l1": 0.0, "giou": 0.0}
    p, t = pred[b, q], target[b, j]
    l1 = (p - t).abs().sum() / n_targets
    lg = (1 - giou(cxcywh_to_xyxy(p), cxcywh_to_xyxy(t))).sum() / n_targets
    return scale * (l1 + lg), {"l1": l1.item(), "giou": lg.item()}
