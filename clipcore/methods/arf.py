"""ARF: anchor-based robust finetuning (Han et al., CVPR 2024) and the robust-finetuning
baselines it is measured against, all through the one training loop.

    python -m clipcore.train --method arf --init theta0.pt --train-data finetune.csv \\
        --arf-captions captions.jsonl --arf-pool pool.csv            # FLYP + L_TCA + L_ITA
    python -m clipcore.train --method arf --arf-mode flyp --init theta0.pt --train-data finetune.csv

Modes (``Config.mode``), every one starting from the pretrained model theta0 (``--init``):
  ft     image tower + a linear head initialised from theta0's class-prompt embeddings (the zero-shot head),
         cross-entropy; text tower frozen                                              (docs/methods.md, ARF §4)
  lpft   the head alone on frozen features (``lp_steps``), then ``ft`` from that head
  flyp   L_FLYP: contrastive finetuning against class prompts, both towers train; same-class images are
         positives, not negatives (``flyp_pos="multi"``; ``"plain"`` = ordinary CLIP loss with duplicates)
  arf    L_FLYP + lambda_tca * L_TCA + lambda_ita * L_ITA                            (docs/methods.md, ARF §3.3)
         L_TCA = L_CL(x_i, Cap(x_i)): finetune images with a captioner's captions (text-compensated anchor)
         L_ITA = L_CL(x_a, t_a): image-text pairs retrieved from a pool by theta0 (image-text pair anchor)
ARF-TCA / ARF-ITA are ``arf`` with lambda_ita = 0 / lambda_tca = 0. Controls (ARF-5): ``random_captions``
(captions replaced by random words of the same length), ``retrieval="random"`` (|A| pool pairs drawn
uniformly), ``l2sp`` (beta/2 ||theta - theta0||^2 on the towers) and ``distill`` (feature distillation to
theta0 on the finetune images). WiSE-FT: :func:`wise` interpolates theta0 and theta for any mode.
``shared_negatives``: one softmax over all texts (and all images) of the step instead of one per term
(:func:`shared_negatives_loss`). Data readers (finetune set, captions, pool): :mod:`clipcore.methods.arf_data`.
Anchor retrieval goes through :mod:`clipcore.memory` (the project's one k-NN path).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore.data import EpochBatchSampler, load_dataset
from clipcore.encoder import Encoder
from clipcore.errors import ConfigError
from clipcore.evaluate import encode, encode_texts
from clipcore.losses import contrastive_loss
from clipcore.methods import HeldOut, Task, base_meta, load_init, model_from_meta
from clipcore.methods.arf_data import Pairs, random_word_captions, read_captions, read_pool  # noqa: F401 (re-exported)
from clipcore.training import TrainConfig

MODES = ("ft", "lpft", "flyp", "arf")


@dataclass
class Config:
    mode: Literal["ft", "lpft", "flyp", "arf"] = "arf"  # ft | lpft | flyp | arf (clipcore/methods/arf.py's docstring)
    lambda_tca: float = 1.0           # weight of L_TCA (the paper: 1, swept over 0.25..2)
    lambda_ita: float = 1.0           # weight of L_ITA
    captions: str = ""                # JSON lines {"image", "caption"}: a captioner's output for the finetune images
    pool: str = ""                    # candidate pool: .csv/.tsv, image folder or JSON lines {"image", "caption"}
    retrieval: Literal["text", "image", "random"] = "text"  # text: pool text vs class prompts | image: pool image vs class image means | random
    k: int = 20                       # anchors kept per class (union over classes, deduplicated)
    anchor_ratio: float = 1.0         # anchor batch size / finetune batch size (1:1 default)
    flyp_pos: Literal["multi", "plain"] = "multi"  # multi: unique prompts, same-class images positives | plain: CLIP loss
    random_captions: bool = False     # ARF-5 control (i)
    l2sp: float = 0.0                 # beta of the L2-SP pull to theta0 (0: off)
    distill: float = 0.0              # beta of feature distillation to theta0 (0: off)
    lp_steps: int = 300               # LP-FT: full-batch Adam steps of the linear-probe stage
    template: str = "a photo of a {}"  # the class prompt p_c
    query_template: str = ""          # [RECON] text of the class queries of retrieval="text"; "" = template. A
                                      # domain word in it ("photo") pulls anchors of that domain (ARF-7). Several
                                      # templates separated by "|" ("a photo of a {}|a sketch of a {}"): each class
                                      # keeps ceil(k / T) pool rows per template (union, deduplicated)
    anchors_out: str = ""             # write the retrieved anchors (row, class, score, caption) as JSON lines
    shared_negatives: bool = False    # [RECON] (the paper's section 3.4) every text of the step (prompts, captions, anchor texts)
                                      # is a candidate of every image, and every image of every text

    def __post_init__(self) -> None:
        """Bad options fail here, before theta0, the finetune data or the pool is read."""
        for name, allowed in (("mode", MODES), ("retrieval", ("text", "image", "random")),
                              ("flyp_pos", ("multi", "plain"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--arf-{name.replace('_', '-')} {getattr(self, name)!r}: choose one of {allowed}")
        negative = [n for n in ("lambda_tca", "lambda_ita", "l2sp", "distill", "lp_steps") if getattr(self, n) < 0]
        if negative or self.k < 1 or self.anchor_ratio <= 0:
            raise ConfigError(f"arf options need k >= 1, anchor_ratio > 0 and {', '.join(negative) or 'weights'} "
                              f">= 0; got k={self.k}, anchor_ratio={self.anchor_ratio}"
                              + "".join(f", {n}={getattr(self, n)}" for n in negative))
        bad = [t for t in self.query_template.split("|") if self.query_template and t.count("{}") != 1]
        if bad:
            raise ConfigError(f"--arf-query-template {self.query_template!r}: each '|'-separated template needs one "
                              f"'{{}}' for the class name; {bad[0]!r} has {bad[0].count('{}')}")
        if self.shared_negatives and self.flyp_pos != "multi":
            raise ConfigError("--arf-shared-negatives pools the batch's unique prompts: it needs --arf-flyp-pos multi")


# ----------------------------------------------------------------------------- losses
def flyp_loss(image: Tensor, prompts: Tensor, labels: Tensor, scale: Tensor | float, pos: str = "multi") -> Tensor:
    """L_FLYP of images (B, D) against class-prompt embeddings ``prompts`` (C, D); labels (B,) index rows of it.

    multi (docs/methods.md, ARF §3.3): image -> text over the batch's unique prompts (CE to its own class); text ->
    image with every same-class image a positive, uniformly weighted. plain: ``contrastive_loss(image,
    prompts[labels])`` (duplicated prompts are negatives of each other: FLYP's false negatives, kept as a check).
    """
    if pos == "plain":
        return contrastive_loss(image, prompts[labels], scale)
    if pos != "multi":
        raise ValueError(f"flyp_pos must be 'multi' or 'plain', got {pos!r}")
    uniq, inv = labels.unique(return_inverse=True)
    logits = scale * image @ prompts[uniq].T                       # (B, U)
    i2t = F.cross_entropy(logits, inv)
    target = F.one_hot(inv, len(uniq)).T.to(logits.dtype)          # (U, B)
    t2i = -(target / target.sum(1, keepdim=True) * logits.T.log_softmax(-1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def shared_negatives_loss(image: Tensor, prompts: Tensor, labels: Tensor, scale: Tensor | float,
                          captions: Tensor | None = None, anchor_image: Tensor | None = None,
                          anchor_text: Tensor | None = None, lambda_tca: float = 1.0,
                          lambda_ita: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """L_FLYP + lambda_tca L_TCA + lambda_ita L_ITA with one candidate set per direction (option shared_negatives).

    image (B, D), prompts (U, D) the batch's unique class prompts, labels (B,) rows of prompts, captions (B, D) of
    the images (or None), anchor_image / anchor_text (B_a, D) (or None). Texts T = [prompts; captions; anchor
    texts], images I = [image; anchor images]; each term keeps its positives (FLYP's as in :func:`flyp_loss`
    "multi", TCA image i <-> caption i, ITA anchor j <-> its text) but every direction's softmax runs over all of
    T or all of I. Without captions and anchors it is exactly ``flyp_loss(image, prompts, labels, scale)``.
    """
    b, u = len(image), len(prompts)
    texts = torch.cat([t for t in (prompts, captions, anchor_text) if t is not None])
    images = image if anchor_image is None else torch.cat([image, anchor_image])
    i2t, t2i = scale * image @ texts.T, scale * texts @ images.T          # (B, |T|), (|T|, |I|)
    same = F.one_hot(labels, u).T.to(t2i.dtype)                          # (U, B) same-class images
    target = F.pad(same / same.sum(1, keepdim=True), (0, len(images) - b))
    loss = 0.5 * (F.cross_entropy(i2t, labels) - (target * t2i[:u].log_softmax(-1)).sum(-1).mean())
    parts, off = {}, u
    if captions is not None:
        ar = torch.arange(b, device=image.device)
        tca = 0.5 * (F.cross_entropy(i2t, off + ar) + F.cross_entropy(t2i[off:off + b], ar))
        loss, parts["tca"], off = loss + lambda_tca * tca, tca.item(), off + b
    if anchor_image is not None:
        ar = torch.arange(len(anchor_image), device=image.device)
        ita = 0.5 * (F.cross_entropy(scale * anchor_image @ texts.T, off + ar) + F.cross_entropy(t2i[off:], b + ar))
        loss, parts["ita"] = loss + lambda_ita * ita, ita.item()
    return loss, parts


def l2sp_penalty(model: nn.Module, reference: dict[str, Tensor]) -> Tensor:
    """sum ||theta - theta0||^2 over the trainable parameters named in ``reference`` (the towers; no head)."""
    terms = [(p - reference[n]).pow(2).sum() for n, p in model.named_parameters() if p.requires_grad and n in reference]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def wise(theta0: dict[str, Tensor], theta: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """WiSE-FT: (1 - alpha) theta0 + alpha theta for every floating tensor (exactly theta0 at 0, theta at 1).

    Keys must match; non-float buffers are taken from theta."""
    if set(theta0) != set(theta):
        raise ValueError(f"WiSE-FT needs the same keys; differ: {sorted(set(theta0) ^ set(theta))[:5]}")
    if alpha in (0.0, 1.0):
        return {k: (theta0 if alpha == 0 else theta)[k].clone() for k in theta}
    return {k: (1 - alpha) * theta0[k] + alpha * v if v.is_floating_point() else v.clone() for k, v in theta.items()}


# ----------------------------------------------------------------------------- model
class Finetuner(nn.Module):
    """theta = a CLIP (both towers) and, for ft/lpft, a linear head (C, D) initialised to the zero-shot head.

    Has ``encode_image``/``encode_text``, so clipcore.evaluate scores it as any CLIP; ``classify`` gives the
    prediction logits of the mode (head for ft/lpft, cosine to the class prompts otherwise)."""

    def __init__(self, clip: nn.Module, zs_head: Tensor | None = None, head_scale: float = 1.0):
        super().__init__()
        self.clip = clip
        self.head = nn.Parameter(zs_head.clone()) if zs_head is not None else None
        self.head_scale = head_scale

    def input_size(self) -> tuple[int, int]:
        return self.clip.input_size()

    def logit_scale_value(self) -> Tensor:
        return self.clip.logit_scale_value()

    def encode_image(self, x: Tensor, normalize: bool = True) -> Tensor:
        return self.clip.encode_image(x, normalize=normalize)

    def encode_text(self, t: Tensor, normalize: bool = True) -> Tensor:
        return self.clip.encode_text(t, normalize=normalize)

    def classify(self, x: Tensor, prompts: Tensor | None = None) -> Tensor:
        """(B, C) logits: head (ft/lpft) or scaled cosine to ``prompts`` (C, D)."""
        f = self.encode_image(x)
        if self.head is not None:
            return self.head_scale * f @ self.head.T
        return f @ prompts.T


def set_trainable(model: Finetuner, mode: str) -> None:
    """ft/lpft: image tower + head (text tower and logit scale frozen); flyp/arf: both towers and the scale."""
    head_only = mode in ("ft", "lpft")
    for p in model.clip.parameters():
        p.requires_grad_(not head_only)
    if head_only:                    # any encoder's image tower: clipcore's CLIP and the open_clip adapter name it visual
        for p in model.clip.visual.parameters():
            p.requires_grad_(True)


def prompt_embeddings(model: Encoder, tokenizer, classnames: Sequence[str], template: str, device) -> Tensor:
    """(C, D) normalised class-prompt embeddings p_c (float32, on ``device``)."""
    return encode_texts(model, tokenizer, [template.format(c) for c in classnames], device=device).to(device)


def fit_head(features: Tensor, labels: Tensor, head: Tensor, scale: float, steps: int, lr: float = 1e-2) -> Tensor:
    """LP stage of LP-FT: cross-entropy on frozen normalised features, head started at the zero-shot head."""
    w = head.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(scale * features @ w.T, labels).backward()
        opt.step()
    return w.detach()


# ----------------------------------------------------------------------------- anchors
def select_anchors(bank, queries: Tensor, k: int, by: str = "text", *, random: bool = False,
                   seed: int = 0, query_class: Tensor | None = None) -> dict[str, Tensor]:
    """Anchor set A (docs/methods.md, ARF §3.2): top-k pool rows per class query, union, deduplicated (a row keeps the
    class that scored it highest). queries (Q, D): theta0's class-prompt embeddings (by="text") or normalised class
    means of theta0's finetune-image features (by="image"); query_class (Q,): the class of each query row (default:
    row q is class q; several query templates give several rows per class). random: the same |A| rows drawn
    uniformly (ARF-5 ii). Returns {"rows" (A,), "cls" (A,), "score" (A,)}."""
    k = min(k, len(bank))
    scores, idx = bank.search(queries, k, by=by)                       # (Q, k)
    qc = torch.arange(len(queries)) if query_class is None else torch.as_tensor(query_class, dtype=torch.long)
    cls = qc.repeat_interleave(k)
    scores, idx = scores.reshape(-1), idx.reshape(-1)
    order = scores.argsort(descending=True)
    seen: dict[int, int] = {}
    for j in order.tolist():
        seen.setdefault(int(idx[j]), j)
    keep = torch.tensor(sorted(seen.values()), dtype=torch.long)
    out = {"rows": idx[keep], "cls": cls[keep], "score": scores[keep]}
    if random:
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(bank), generator=g)[:len(keep)]
        out = {"rows": rows, "cls": torch.full_like(rows, -1), "score": torch.full((len(rows),), float("nan"))}
    return out


# ----------------------------------------------------------------------------- the task
def _embed_images(model: Encoder, data: Pairs, device, batch: int = 512) -> Tensor:
    """(N, D) normalised image features of ``data`` (float32, on ``device``)."""
    return encode(model, "image", _image_batches(data, batch), device=device).to(device)


def _image_batches(data: Pairs, batch: int):
    return (data.batch_images(range(i, min(i + batch, len(data)))) for i in range(0, len(data), batch))


def _pick(seed: int, epoch: int, idx: Sequence[int], counts: Tensor) -> Tensor:
    """Which of each image's captions this epoch uses: a hash of (seed, epoch, index), stable under resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    u = torch.rand(int(counts.numel()), generator=g)
    i = torch.as_tensor(list(idx), dtype=torch.long)
    return (u[i] * counts[i]).long()


def arf_task(theta0: nn.Module, tokenizer, finetune: Pairs, mcfg: Config, *, batch_size: int, seed: int,
             device: torch.device, pool: Pairs | None = None, evaluate=None, eval_splits: tuple = ()):
    """The finetuning Task of ``mcfg.mode`` from theta0 (left untouched) on ``finetune`` (labelled images,
    classnames, and for L_TCA its captions) and, for L_ITA, ``pool`` (images + captions)."""
    if finetune.classnames is None or finetune.labels is None or bool((finetune.labels < 0).any()):
        raise ConfigError("ARF finetunes a classifier: the finetune data needs labels and class names "
                         "(a CSV with a label column, or an image folder with one subfolder per class)")
    theta0 = theta0.to(device).eval()
    for p in theta0.parameters():
        p.requires_grad_(False)
    arf = mcfg.mode == "arf"
    use_tca, use_ita = arf and mcfg.lambda_tca > 0, arf and mcfg.lambda_ita > 0
    if use_tca and not finetune.captions:
        raise ConfigError("L_TCA needs captions of the finetune images: pass --arf-captions FILE.jsonl "
                         "(or --arf-lambda-tca 0)")
    if use_ita and pool is None:
        raise ConfigError("L_ITA needs a candidate pool: pass --arf-pool FILE (or --arf-lambda-ita 0)")
    classes = finetune.classnames
    prompt_tokens = tokenizer([mcfg.template.format(c) for c in classes]).to(device)
    prompts0 = prompt_embeddings(theta0, tokenizer, classes, mcfg.template, device)            # (C, D)
    scale0 = float(theta0.logit_scale_value())
    labels = finetune.labels.to(device)
    head = None
    if mcfg.mode in ("ft", "lpft"):
        head = prompts0.clone()
        if mcfg.mode == "lpft":
            head = fit_head(_embed_images(theta0, finetune, device), labels, head, scale0, mcfg.lp_steps)
    model = Finetuner(copy.deepcopy(theta0), head, scale0).to(device)
    set_trainable(model, mcfg.mode)
    reference = {n: p.detach().clone() for n, p in theta0.named_parameters()}

    cap_tokens = cap_first = cap_count = None
    if use_tca:
        caps = [list(c) if not isinstance(c, str) else [c] for c in finetune.captions]
        flat = [c for cs in caps for c in cs]
        if mcfg.random_captions:
            flat = random_word_captions(flat, seed)
        cap_tokens = tokenizer(flat).to(device)
        cap_count = torch.tensor([len(cs) for cs in caps])
        cap_first = torch.cumsum(cap_count, 0) - cap_count
    anchors = None
    if use_ita:
        from clipcore.memory import MemoryBank, encode_pairs
        pool_caps = [c if isinstance(c, str) else c[0] for c in pool.captions]
        pool_tokens = tokenizer(pool_caps)
        img, txt = encode_pairs(theta0, torch.cat([pool.batch_images(range(i, min(i + 512, len(pool))))
                                                   for i in range(0, len(pool), 512)]), pool_tokens, device=device)
        bank = MemoryBank(img, txt, meta={"encoder": "theta0", "source": "arf pool"})
        query_class, k = None, mcfg.k
        if mcfg.retrieval == "image":
            feats = _embed_images(theta0, finetune, device).cpu()
            queries = F.normalize(torch.stack([feats[finetune.labels == c].mean(0) for c in range(len(classes))]), dim=-1)
        else:                                   # text, random (Config checks the choice)
            qts = (mcfg.query_template or mcfg.template).split("|")
            queries = torch.cat([(prompts0 if qt == mcfg.template else
                                  prompt_embeddings(theta0, tokenizer, classes, qt, device)).cpu() for qt in qts])
            query_class, k = torch.arange(len(classes)).repeat(len(qts)), -(-mcfg.k // len(qts))
        anchors = select_anchors(bank, queries, k, "image" if mcfg.retrieval == "image" else "text",
                                 random=mcfg.retrieval == "random", seed=seed, query_class=query_class)
        anchors["tokens"] = pool_tokens[anchors["rows"]].to(device)
        if mcfg.anchors_out:
            with open(mcfg.anchors_out, "w") as f:
                for r, c, s in zip(*(anchors[k].tolist() for k in ("rows", "cls", "score"))):
                    f.write(json.dumps({"row": r, "class": classes[c] if c >= 0 else None, "score": s,
                                        "caption": pool_caps[r]}) + "\n")
    b_anchor = max(1, round(batch_size * mcfg.anchor_ratio))
    steps = len(finetune) // batch_size

    def loader(epoch: int, start: int):
        sampler = EpochBatchSampler(len(finetune), batch_size, seed=seed, epoch=epoch, start_batch=start)
        for k, idx in enumerate(sampler, start=start):
            rows = None
            if anchors is not None:
                g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + k)
                rows = torch.randint(len(anchors["rows"]), (b_anchor,), generator=g)   # with replacement
            yield epoch, idx, rows

    def step(batch):
        epoch, idx, rows = batch
        x, y = finetune.batch_images(idx).to(device), labels[torch.as_tensor(idx)]
        img = model.encode_image(x)
        info = {}
        if head is not None:
            loss = F.cross_entropy(model.head_scale * img @ model.head.T, y)
        else:
            scale = model.clip.logit_scale_value()
            uniq, inv = y.unique(return_inverse=True)
            prompts = model.encode_text(prompt_tokens[uniq])
            info["logit_scale"] = scale.item()
            caps = a_img = a_txt = None
            if use_tca:
                pick = cap_first[torch.as_tensor(idx)] + _pick(seed, epoch, idx, cap_count)
                caps = model.encode_text(cap_tokens[pick.to(device)])
            if use_ita:
                a_img = model.encode_image(pool.batch_images(anchors["rows"][rows].tolist()).to(device))
                a_txt = model.encode_text(anchors["tokens"][rows.to(device)])
            if mcfg.shared_negatives:
                loss, parts = shared_negatives_loss(img, prompts, inv, scale, caps, a_img, a_txt,
                                                    mcfg.lambda_tca, mcfg.lambda_ita)
                info.update(parts)
            else:
                loss = flyp_loss(img, prompts, inv, scale, mcfg.flyp_pos)
                if use_tca:
                    tca = contrastive_loss(img, caps, scale)
                    loss, info["tca"] = loss + mcfg.lambda_tca * tca, tca.item()
                if use_ita:
                    ita = contrastive_loss(a_img, a_txt, scale)
                    loss, info["ita"] = loss + mcfg.lambda_ita * ita, ita.item()
        if mcfg.l2sp:
            loss = loss + 0.5 * mcfg.l2sp * l2sp_penalty(model.clip, reference)
        if mcfg.distill:
            with torch.no_grad():
                f0 = theta0.encode_image(x, normalize=True)
            loss = loss + mcfg.distill * (img - f0).pow(2).sum(-1).mean()
        return loss, info

    n_anchor = 0 if anchors is None else len(anchors["rows"])
    task = Task(model=model, steps_per_epoch=steps, loader=loader, step=step, evaluate=evaluate,
                eval_splits=eval_splits,
                describe=f"ARF mode {mcfg.mode}: {len(finetune)} finetune images, {len(classes)} classes"
                         + (f", {len(cap_tokens)} captions" if use_tca else "")
                         + (f", {n_anchor} anchors ({mcfg.retrieval} retrieval, k={mcfg.k}) from a pool of {len(pool)}" if use_ita else ""))
    task.theta0, task.prompts0, task.anchors = theta0, prompts0, anchors   # for WiSE-FT and diagnostics
    return task


def wise_model(task, alpha: float) -> Finetuner:
    """theta_alpha = (1 - alpha) theta0 + alpha theta of a finished task's model (the zero-shot head is theta0's head)."""
    model = task.model
    ref = Finetuner(task.theta0, task.prompts0.clone() if model.head is not None else None, model.head_scale)
    out = copy.deepcopy(model)
    out.load_state_dict(wise(ref.state_dict(), model.state_dict(), alpha))
    return out.eval()


@torch.no_grad()
def accuracy(model, tokenizer, data: Pairs, classnames: Sequence[str], template: str, device,
             use_head: bool = False, batch: int = 512) -> float:
    """Top-1 of argmax_c <f(x), g(p_c)> over ``classnames`` (labels of ``data`` index them), or of the FT
    head when ``use_head`` (only for the finetune classes)."""
    if len(data) == 0:
        return 0.0
    classes = model.head if use_head else prompt_embeddings(model, tokenizer, classnames, template, device)
    feats = encode(model, "image", _image_batches(data, batch), device=device)
    return int((feats @ classes.detach().float().cpu().T).argmax(-1).eq(data.labels).sum()) / len(data)


def _relabel(ds, classnames: Sequence[str]) -> Tensor:
    """Labels of an evaluation set as indices into the finetune classes (matched by name)."""
    if ds.classnames is None or bool((ds.labels < 0).any()):
        raise ConfigError("ARF evaluation data needs labels (a CSV label column or class folders)")
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted(set(ds.classnames) - set(index))
    if unknown:
        raise ConfigError(f"evaluation classes {unknown[:5]} are not among the finetune classes")
    return torch.tensor([index[ds.classnames[int(y)]] for y in ds.labels], dtype=torch.long)


def build(cfg: TrainConfig, mcfg: Config, device: torch.device) -> Task:
    """``python -m clipcore.train --method arf``: theta0 from --init, finetune set from --train-data (labelled
    CSV or class folders; default: the embedded animal-mnist train split), --arf-captions, --arf-pool.
    Evaluates ID accuracy on --val-data (or the default's val/test splits) with a WiSE-FT alpha sweep."""
    theta0, tokenizer, ckpt, kw = load_init(
        cfg, device, "--method arf finetunes a pretrained model: pass --init CHECKPOINT (theta0, e.g. a "
                     "checkpoint written by python -m clipcore.train)")
    ds = load_dataset(cfg.train_data, "train", **kw)
    captions = None
    if mcfg.captions:
        if ds.paths is None:
            raise ConfigError("--arf-captions needs a file-backed finetune set (--train-data CSV or folder) whose "
                             "image paths the caption lines name")
        captions = read_captions(mcfg.captions, ds.paths)
    finetune = Pairs(ds, captions, ds.labels, ds.classnames)
    pool = None
    if mcfg.pool:
        pds = read_pool(mcfg.pool, **kw)
        pool = Pairs(pds, pds.captions if pds.captions is not None else pds.captions_at(list(range(len(pds)))))
    held = HeldOut(cfg, kw)
    holder = {}

    def evaluate(split: str) -> dict:
        ds_eval = held.dataset(split)
        data = Pairs(ds_eval, labels=_relabel(ds_eval, ds.classnames), classnames=ds.classnames)
        head = mcfg.mode in ("ft", "lpft")
        acc = lambda m: accuracy(m, tokenizer, data, ds.classnames, mcfg.template, device, use_head=head)  # noqa: E731
        out = {"acc1": acc(holder["task"].model)}
        if split == "test":
            for a in (0.0, 0.25, 0.5, 0.75):
                out[f"wise{a:g}/acc1"] = acc(wise_model(holder["task"], a))
        return out

    task = arf_task(theta0, tokenizer, finetune, mcfg, batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                    pool=pool, evaluate=evaluate if held else None, eval_splits=held.eval_splits(final=True))
    holder["task"] = task
    task.meta = {**base_meta(ckpt, kw),
                 "arf_anchors": None if task.anchors is None else {k: v.cpu() for k, v in task.anchors.items()}}
    task.held_out = held.describe
    return task


def load(ckpt: dict, device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    """The model of a ``--method arf`` checkpoint (``clipcore.methods.load_model`` calls this) -> (the finetuned
    encoder, tokenizer): the base model the checkpoint records (a clipcore CLIP or an OpenCLIP) with the weights
    the :class:`Finetuner` holds under ``clip.``; its linear head, if any, is not part of it."""
    model, tokenizer = model_from_meta(ckpt)
    model.load_state_dict({k[len("clip."):]: v for k, v in ckpt["model"].items() if k.startswith("clip.")})
    return model.to(device), tokenizer
