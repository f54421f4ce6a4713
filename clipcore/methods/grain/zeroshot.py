"""GRAIN's zero-shot classification with descriptions and grounding diagnostics (docs/methods.md, GRAIN §6, §10).

    vecs = class_embeddings(model, tok, names, descriptors, templates, mode="name+desc")   # (C, D)
    scores = zero_shot_scores(g, vecs, regions, desc_emb, desc_mask, alpha=0.7)            # (N, C)
    metrics = evaluate_descriptions(model, tok, images, labels, classes_table, parts)      # every mode, subset

``model`` is a :class:`clipcore.methods.grain.GrainModel` (``encode_text`` and a forward returning global and
region embeddings and boxes); the name-only mode works for any CLIP-interface model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.evaluate import encode_texts
from clipcore.methods.grain.boxes import box_iou, cxcywh_to_xyxy, hungarian_match, match_cost


# ----------------------------------------------------------------------------- zero-shot with descriptions
def connective(descriptor: str) -> str:
    """The official code's joint between "t(name)" and a descriptor, chosen by the descriptor's first word."""
    first = descriptor.split()[0].lower() if descriptor.split() else ""
    if first in ("a", "an", "used"):
        return "which is"
    if first in ("has", "often", "typically", "may", "can"):
        return "which"
    return "which has"


@torch.no_grad()
def class_embeddings(model, tokenizer, names: list[str], descriptors: list[list[str]], templates: list[str],
                     mode: str = "name+desc", renorm: bool = False, device="cpu") -> Tensor:
    """(C, D) class vectors (docs/methods.md, GRAIN §6), each the mean of L2-normalised prompt embeddings:

    name       mean_t Enc(t(n_y))
    name+desc  1/(|D_y||T|) sum_{d, t} Enc(t(n_y) + conn(d) + d)        (the official code's mode)
    desc       mean_d Enc(d)                                             (the only mode for never-trained names)
    The official code does not re-normalise the mean (class norms then act as a per-class bias): ``renorm``.
    """
    prompts: list[list[str]] = []
    for n, ds in zip(names, descriptors):
        if mode == "name":
            prompts.append([t.format(c=n) for t in templates])
        elif mode == "name+desc":
            prompts.append([f"{t.format(c=n)} {connective(d)} {d}" for d in ds for t in templates])
        elif mode == "desc":
            prompts.append(list(ds))
        else:
            raise ValueError(f"mode must be name, name+desc or desc, got {mode!r}")
    flat = [p for ps in prompts for p in ps]
    emb = encode_texts(model, tokenizer, flat, batch_size=1024, device=device)
    out, i = [], 0
    for ps in prompts:
        out.append(emb[i:i + len(ps)].mean(0))
        i += len(ps)
    out = torch.stack(out)
    return F.normalize(out, dim=-1) if renorm else out


def zero_shot_scores(image: Tensor, classes: Tensor, regions: Tensor | None = None, desc: Tensor | None = None,
                     desc_mask: Tensor | None = None, alpha: float = 1.0) -> Tensor:
    """score(x, y) = alpha g.c_y + (1 - alpha) 1/Q sum_k max_{d in D_y} r_k . Enc(d)  -> (N, C)
    (docs/methods.md, GRAIN §6).

    image (N, D) and regions (N, Q, D) normalised; classes (C, D); desc (C, M, D) raw descriptor embeddings
    (no templates) with desc_mask (C, M). All Q region queries count, on a part or not, as in the code.
    """
    s = alpha * image @ classes.T
    if alpha == 1.0:
        return s
    sim = torch.einsum("nqd,cmd->nqcm", regions, desc).masked_fill(~desc_mask[None, None], -math.inf)
    return s + (1 - alpha) * sim.amax(-1).mean(1)


@torch.no_grad()
def image_outputs(model, images: Tensor, device, batch: int = 512) -> dict[str, Tensor]:
    """Normalised global (N, D), region (N, Q, D) embeddings and boxes (N, Q, 4) of a set of images."""
    was = model.training
    model.eval()
    outs = [model(images[i:i + batch].to(device)) for i in range(0, len(images), batch)]
    model.train(was)
    cat = lambda k: torch.cat([o[k].float().cpu() for o in outs])  # noqa: E731
    return {"global": F.normalize(cat("global"), dim=-1), "regions": F.normalize(cat("regions"), dim=-1),
            "boxes": cat("boxes")}


MODES = ("name", "name+desc", "name+desc-renorm", "desc")
ALPHAS = (0.7, 0.5)           # region fusion, on top of the name+desc class vectors


@torch.no_grad()
def evaluate_descriptions(model, tokenizer, images: Tensor, labels: Tensor, table: dict,
                          parts: Tensor | None = None, device="cpu") -> dict[str, float]:
    """Zero-shot with descriptions on labelled images, for every mode and class subset, plus grounding.

    table: {"classes": [{"name", "descriptors", "group", "seen", "parts"?}], "templates": [...]} (PartWorld's
    classes.json). Keys "{subset}/{mode}/{acc|sibling|coarse}": subset all / seen / novel (images of those classes,
    classified among those classes); mode in MODES or "fusion{alpha}"; sibling = top-1 among the label's sibling
    group, coarse = the predicted class is in the right group. With parts (N, P, 4) clean xyxy boxes:
    "grounding/box_iou50" (share of region queries Hungarian-matched to a true part with IoU > 0.5) and
    "grounding/desc2region" (share of parts whose clean description's most similar query has IoU > 0.5 with it).
    """
    cls = table["classes"]
    names, descs = [c["name"] for c in cls], [list(c["descriptors"]) for c in cls]
    groups = torch.tensor([c["group"] for c in cls])
    seen = torch.tensor([bool(c["seen"]) for c in cls])
    out_img = image_outputs(model, images, device)
    g, r = out_img["global"], out_img["regions"]
    vecs = {m: class_embeddings(model, tokenizer, names, descs, table["templates"], m, device=device)
            for m in ("name", "name+desc", "desc")}
    vecs["name+desc-renorm"] = F.normalize(vecs["name+desc"], dim=-1)
    m_max = max(len(d) for d in descs)
    flat = encode_texts(model, tokenizer, [d for ds in descs for d in ds], batch_size=1024, device=device)
    desc_emb, desc_mask = torch.zeros(len(cls), m_max, flat.shape[1]), torch.zeros(len(cls), m_max, dtype=torch.bool)
    i = 0
    for c, ds in enumerate(descs):
        desc_emb[c, :len(ds)], desc_mask[c, :len(ds)] = flat[i:i + len(ds)], True
        i += len(ds)
    res: dict[str, float] = {}
    for subset, keep in (("all", torch.ones_like(seen)), ("seen", seen), ("novel", ~seen)):
        cidx = keep.nonzero().squeeze(1)
        sel = keep[labels]
        if cidx.numel() == 0 or not sel.any():
            continue
        y = torch.searchsorted(cidx, labels[sel])                      # label within the subset
        same_group = groups[cidx][None, :] == groups[labels[sel]][:, None]
        for mode in MODES + tuple(f"fusion{a}" for a in ALPHAS):
            alpha = float(mode[6:]) if mode.startswith("fusion") else 1.0
            base = vecs["name+desc" if mode.startswith("fusion") else mode]
            s = zero_shot_scores(g[sel], base[cidx], r[sel], desc_emb[cidx], desc_mask[cidx], alpha)
            pred = s.argmax(1)
            res[f"{subset}/{mode}/acc"] = (pred == y).float().mean().item()
            res[f"{subset}/{mode}/sibling"] = (s.masked_fill(~same_group, -math.inf).argmax(1) == y).float().mean().item()
            res[f"{subset}/{mode}/coarse"] = (groups[cidx][pred] == groups[labels[sel]]).float().mean().item()
    if parts is not None:
        res.update(grounding(out_img, labels, parts, table, model, tokenizer, device))
    return {"acc1": res["all/name+desc/acc"], **res}


@torch.no_grad()
def grounding(out_img: dict, labels: Tensor, parts: Tensor, table: dict, model, tokenizer, device) -> dict[str, float]:
    """Grounding diagnostics against clean part boxes parts (N, P, 4) xyxy (see evaluate_descriptions)."""
    boxes = out_img["boxes"]                                         # (N, Q, 4) cxcywh
    xyxy = cxcywh_to_xyxy(boxes)
    target = torch.stack([(parts[..., 0] + parts[..., 2]) / 2, (parts[..., 1] + parts[..., 3]) / 2,
                          parts[..., 2] - parts[..., 0], parts[..., 3] - parts[..., 1]], -1)
    b, q, j = hungarian_match(match_cost(boxes, target), torch.ones(parts.shape[:2], dtype=torch.bool))
    box_iou50 = (box_iou(xyxy[b, q], parts[b, j]) > 0.5).float().mean().item()
    phrases = [[" ".join((s[1], s[2], s[0])) for s in c["parts"]] for c in table["classes"]]
    distinct = sorted({p for ps in phrases for p in ps})
    emb = encode_texts(model, tokenizer, distinct, batch_size=1024, device=device)
    idx = {p: k for k, p in enumerate(distinct)}
    pid = torch.tensor([[idx[p] for p in phrases[c]] for c in labels.tolist()])            # (N, P)
    sims = torch.einsum("nqd,npd->npq", out_img["regions"], emb[pid])
    best = sims.argmax(-1)                                                                 # (N, P) query per part
    hit = box_iou(xyxy.gather(1, best[..., None].expand(-1, -1, 4)), parts) > 0.5
    return {"grounding/box_iou50": box_iou50, "grounding/desc2region": hit.float().mean().item()}
