"""GRAIN: grounding descriptions in image regions (Halbe et al., arXiv 2412.04429).

    python -m clipcore.train --method grain                                    # a PartWorld generated in memory
    python -m clipcore.train --method grain --train-data annotations.jsonl     # the JSON-lines region format
    python -m clipcore.train --method grain --grain-lambda-rd 0 --grain-box-scale 1   # ablation / paper-style

Image tokens -> bias-free linear bridge + LayerNorm (the memory) -> DETR-style pre-norm decoder over
``num_region_queries`` region queries + 1 image query (learned query embeddings added to zero-initialised targets)
-> the image query through ``img_proj`` is the global embedding g (used by L_ic and zero-shot; not the CLS token),
the region queries through ``obj_proj`` are region embeddings r_k, and a 3-layer MLP with sigmoid predicts their
boxes (cx, cy, w, h). Loss (docs/methods.md, GRAIN §4), with s = exp(logit_scale) <= 100 shared:

    L = l_ic L_ic + l_box L_box + l_rd L_rd            (official code: l = 1, box_scale 1.5 inside L_box)

Controls of the experiments are options: ``lambda_box = lambda_rd = 0`` is CLIP on the same architecture (C0/C1),
``lambda_desc_global`` adds descriptions as extra global positives (C2), ``match="similarity"`` matches queries to
descriptions without boxes (G-box), ``shuffle_descriptions`` breaks the grounding (G-shuf).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore import checkpoint as ckpt_io
from clipcore.errors import ConfigError
from clipcore.images import PreprocessCfg
from clipcore.losses import contrastive_loss
from clipcore.methods import Task, trainable_parameters
from clipcore.methods.grain.annotations import RegionBatch, from_records, load_annotations, region_loader
from clipcore.methods.grain.boxes import Match, box_loss, cxcywh_to_xyxy, hungarian_match, match_cost  # noqa: F401
# re-exported: the zero-shot modes are part of the method's public API
from clipcore.methods.grain.partworld import PartWorld, PartWorldConfig
from clipcore.methods.grain.zeroshot import (class_embeddings, connective, evaluate_descriptions,  # noqa: F401
                                             image_outputs, zero_shot_scores)
from clipcore.models import (CLIPConfig, build_text, build_vision, config_from_dict, get_config, logit_scale_from,
                             num_params)
from clipcore.tokenizer import WordTokenizer
from clipcore.training import TrainConfig


@dataclass
class Config:
    # decoder head (the official code: 6 layers, d 512, 8 heads, FFN 2048, dropout 0.1)
    num_region_queries: int = 5       # = the top-5 detections kept per image
    decoder_layers: int = 2          # blocks of the region decoder
    decoder_width: int = 128         # its width
    decoder_heads: int = 4           # its attention heads
    decoder_ffn: int = 512           # its feed-forward width
    dropout: float = 0.1             # decoder dropout
    # losses
    lambda_ic: float = 1.0           # weight of the image-caption InfoNCE
    lambda_box: float = 1.0          # weight of the box loss (L1 + GIoU after Hungarian matching)
    lambda_rd: float = 1.0           # weight of the region-description loss
    box_scale: float = 1.5            # 1.5: the code's hidden factor; 1: paper-style (with unit lambdas)
    lambda_desc_global: float = 0.0   # C2 control: image <-> description InfoNCE on the global embedding
    match: Literal["box", "similarity"] = "box"  # box: 5 L1 - 2 GIoU (official) | similarity: -r.d, no boxes (G-box)
    ic_targets: Literal["caption", "diagonal"] = "caption"  # caption: identical caption strings are positives | diagonal: y_i = i (code)
    rd_mask_duplicates: bool = False  # False (code): identical strings on other boxes are negatives too
    aux_loss: bool = False            # DETR deep supervision: box and rd losses on every decoder layer
    # data
    caption_mix: float = 0.5          # probability of the MLLM caption (aug_caption); 0 = alt-text only (C0)
    shuffle_descriptions: bool = False  # G-shuf: descriptions permuted across each image's boxes
    score_threshold: float = 0.3     # detector regions scored below it are dropped
    tokenizer: Literal["auto", "word", "bpe"] = "auto"  # auto: word-level for PartWorld, else the preset's | word | bpe
    context_length: int = 0           # 0: the preset's
    # the default data: a PartWorld generated in memory when --train-data is omitted (theory/partworld.py)
    world_train: int = 20_000        # PartWorld training images
    world_test_per_class: int = 10   # PartWorld test images per class
    world_seed: int = -1              # -1: the run's --seed
    # training to a plateau (plateau.py): early stopping on the validation loss of held-out training data
    val_size: int = 0                 # held-out images for the validation loss (PartWorld: a separate draw of its
                                      # seen classes; --train-data: rows held out of the file); 0: no validation
    val_every: int = 0                # optimiser steps between validation checks; 0: once per epoch
    patience: int = 0                 # stop after this many checks without improvement, restoring the best
                                      # check's weights; 0: never stop early (the loss is still tracked)
    min_delta: float = 0.0            # the decrease of the validation loss that counts as an improvement

    def __post_init__(self) -> None:
        """Bad options fail here, before any checkpoint or data is read."""
        for name, allowed in (("match", ("box", "similarity")), ("ic_targets", ("caption", "diagonal")),
                              ("tokenizer", ("auto", "word", "bpe"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--grain-{name.replace('_', '-')} {getattr(self, name)!r}: choose one of {allowed}")
        if min(self.num_region_queries, self.decoder_layers, self.decoder_heads) < 1 or \
                self.decoder_width % self.decoder_heads:
            raise ConfigError(f"grain needs num_region_queries, decoder_layers, decoder_heads >= 1 and decoder_heads "
                              f"dividing decoder_width; got {self.num_region_queries}, {self.decoder_layers}, "
                              f"{self.decoder_heads}, {self.decoder_width}")
        if min(self.val_size, self.val_every, self.patience, self.min_delta) < 0 or (self.patience and not self.val_size):
            raise ConfigError(f"grain needs val_size, val_every, patience, min_delta >= 0, and --grain-val-size > 0 for "
                              f"--grain-patience; got {self.val_size}, {self.val_every}, {self.patience}, {self.min_delta}")
        if not 0 <= self.caption_mix <= 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"grain needs 0 <= caption_mix <= 1 and 0 <= dropout < 1; got {self.caption_mix}, "
                              f"{self.dropout}")


# ----------------------------------------------------------------------------- model
class DecoderLayer(nn.Module):
    """DETR pre-norm decoder layer: t += SA(ln(t) + q, ln(t) + q, ln(t)); t += CA(ln(t) + q, m + p, m); t += FFN(ln(t))."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, t: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor | None) -> Tensor:
        h = self.norms[0](t)
        t = t + self.drop(self.self_attn(h + query_pos, h + query_pos, h, need_weights=False)[0])
        h = self.norms[1](t)
        key = memory if memory_pos is None else memory + memory_pos
        t = t + self.drop(self.cross_attn(h + query_pos, key, memory, need_weights=False)[0])
        return t + self.drop(self.ffn(self.norms[2](t)))


class GrainModel(nn.Module):
    """Image tower tokens -> bridge -> decoder -> global embedding, region embeddings, boxes; plus the text tower.

    ``encode_image`` / ``encode_text`` follow the CLIP interface, so clipcore.evaluate works unchanged.
    """

    def __init__(self, cfg: CLIPConfig, mcfg: Config):
        super().__init__()
        self.cfg, self.mcfg, d, q = cfg, mcfg, mcfg.decoder_width, mcfg.num_region_queries
        vis = cfg.vision
        if vis.kind not in ("vit", "conv"):
            raise ValueError(f"GRAIN needs a token-producing image tower (vit or conv), got vision.kind={vis.kind!r}")
        self.visual = build_vision(vis, cfg.embed_dim)
        self.visual.proj = None                   # the CLS projection is unused: the global embedding is a query
        width = vis.width if vis.kind == "vit" else vis.channels[-1]
        self.text = build_text(cfg.text, cfg.embed_dim)
        self.bridge = nn.Linear(width, d, bias=False)
        self.memory_norm = nn.LayerNorm(d)
        # ViT tokens carry learned positions; conv feature maps do not, so they get a learned memory position.
        n_conv = (vis.image_size // 2 ** len(vis.channels)) ** 2
        self.memory_pos = nn.Parameter(torch.randn(n_conv, d) * 0.02) if vis.kind == "conv" else None
        self.queries = nn.Parameter(torch.randn(q + 1, d))        # region queries 0..q-1, image query last
        self.layers = nn.ModuleList(DecoderLayer(d, mcfg.decoder_heads, mcfg.decoder_ffn, mcfg.dropout)
                                    for _ in range(mcfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.box_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))
        self.img_proj = nn.Parameter(torch.randn(d, cfg.embed_dim) * d**-0.5)
        self.obj_proj = nn.Parameter(torch.randn(d, cfg.embed_dim) * d**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))

    def logit_scale_value(self) -> Tensor:
        """exp(l), l clamped to [0, log 100] (s4)."""
        return logit_scale_from(self.logit_scale, 100.0, min_scale=1.0)

    def image_tokens(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, width): the ViT's final-normed tokens (CLS included) or the conv feature map."""
        if self.cfg.vision.kind == "vit":
            return self.visual.tokens(images)
        return self.visual.features(images).flatten(2).transpose(1, 2)

    def forward(self, images: Tensor) -> dict[str, Tensor | list]:
        """(B, C, H, W) -> {"global" (B, D), "regions" (B, Q, D), "boxes" (B, Q, 4) cxcywh in [0, 1],
        "aux": [(regions, boxes) of each earlier decoder layer] when aux_loss}; embeddings not normalised."""
        memory = self.memory_norm(self.bridge(self.image_tokens(images)))
        pos = self.queries.expand(images.shape[0], -1, -1)
        t, outs = torch.zeros_like(pos), []
        for layer in self.layers:
            t = layer(t, memory, pos, self.memory_pos)
            outs.append(t)
        heads = [self._heads(self.decoder_norm(o)) for o in (outs if self.mcfg.aux_loss else outs[-1:])]
        g, r, b = heads[-1]
        return {"global": g, "regions": r, "boxes": b, "aux": [(r_, b_) for _, r_, b_ in heads[:-1]]}

    def _heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.mcfg.num_region_queries
        return h[:, q] @ self.img_proj, h[:, :q] @ self.obj_proj, self.box_head(h[:, :q]).sigmoid()

    def input_size(self) -> tuple[int, int]:
        """(image_size, in_channels) the image tower expects."""
        return self.cfg.vision.image_size, self.cfg.vision.in_channels

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        g = self(images)["global"]
        return F.normalize(g, dim=-1) if normalize else g

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        t = self.text(tokens)
        return F.normalize(t, dim=-1) if normalize else t


# ----------------------------------------------------------------------------- losses
def similarity_match(regions: Tensor, text: Tensor, region_text: Tensor, box_mask: Tensor) -> Match:
    """G-box matching: Hungarian per image on cost -r_k . d_j (normalised embeddings), no boxes involved."""
    with torch.no_grad():
        d = text[region_text.clamp(min=0)]                          # (B, T, D)
        return hungarian_match(-torch.einsum("bqd,btd->bqt", regions, d), box_mask)


def region_description_loss(regions: Tensor, text: Tensor, region_text: Tensor, box_mask: Tensor, match: Match,
                            scale: Tensor, mask_duplicates: bool = False) -> Tensor:
    """L_rd = -1/|sigma| sum_{(i,k,j)} log exp(s r_ik . d_ij) / sum_{d in D} exp(s r_ik . d)
    (docs/methods.md, GRAIN §4).

    regions (B, Q, D) and text (U, D) normalised; region_text (B, T) indexes ``text``; D = every description
    instance of the batch. Equal strings have equal embeddings, so the sum over instances is a sum over the
    distinct strings weighted by their counts: logsumexp(logits + log count), exact, without repeated columns.
    ``mask_duplicates`` drops the counts: other boxes with the same string are then no extra negatives.
    """
    b, q, j = match
    if b.numel() == 0:
        return regions.sum() * 0.0
    cand, counts = torch.unique(region_text[box_mask], return_counts=True)     # sorted distinct description ids
    logits = scale * regions[b, q] @ text[cand].T                                  # (M, U_d)
    target = torch.searchsorted(cand, region_text[b, j])
    norm = (logits + counts.log().to(logits.dtype)).logsumexp(1) if not mask_duplicates else logits.logsumexp(1)
    return (norm - logits.gather(1, target[:, None]).squeeze(1)).mean()


def description_global_loss(image: Tensor, text: Tensor, region_text: Tensor, box_mask: Tensor, scale: Tensor) -> Tensor:
    """C2 control: symmetric multi-positive InfoNCE between global image embeddings (B, D) and the batch's distinct
    descriptions; an image's positives are its own descriptions (no boxes, no regions)."""
    cand = torch.unique(region_text[box_mask])
    if cand.numel() == 0:
        return image.sum() * 0.0
    pos = (region_text[:, :, None] == cand[None, None, :]).any(1).float()           # (B, U_d)
    logits = scale * image @ text[cand].T
    rows, cols = pos.sum(1) > 0, pos.sum(0) > 0
    i2d = F.cross_entropy(logits[rows], pos[rows] / pos[rows].sum(1, keepdim=True))
    d2i = F.cross_entropy(logits.T[cols], pos.T[cols] / pos.T[cols].sum(1, keepdim=True))
    return 0.5 * (i2d + d2i)


def grain_loss(out: dict, batch: RegionBatch, text: Tensor, scale: Tensor, mcfg: Config) -> tuple[Tensor, dict[str, float]]:
    """The total loss of one batch. out: GrainModel(images); text (U, D) normalised embeddings of batch.tokens."""
    g = F.normalize(out["global"].float(), dim=-1)
    labels = batch.caption if mcfg.ic_targets == "caption" else None
    l_ic = contrastive_loss(g, text[batch.caption], scale, labels=labels)
    loss, logs = mcfg.lambda_ic * l_ic, {"ic": l_ic.item(), "logit_scale": scale.item()}
    if mcfg.lambda_desc_global:
        l_dg = description_global_loss(g, text, batch.region_text, batch.box_mask, scale)
        loss, logs["desc_global"] = loss + mcfg.lambda_desc_global * l_dg, l_dg.item()
    if not (mcfg.lambda_box or mcfg.lambda_rd):
        return loss, logs
    n_targets = int(batch.box_mask.sum())
    layers = [(out["regions"], out["boxes"])] + (list(reversed(out["aux"])) if mcfg.aux_loss else [])
    for depth, (regions, boxes) in enumerate(layers):
        r = F.normalize(regions.float(), dim=-1)
        if mcfg.match == "box":
            match = hungarian_match(match_cost(boxes.float(), batch.boxes), batch.box_mask)
        elif mcfg.match == "similarity":
            match = similarity_match(r, text, batch.region_text, batch.box_mask)
        else:
            raise ValueError(f"grain match must be 'box' or 'similarity', got {mcfg.match!r}")
        l_box, parts = box_loss(boxes.float(), batch.boxes, match, n_targets, scale=mcfg.box_scale)
        l_rd = region_description_loss(r, text, batch.region_text, batch.box_mask, match, scale, mcfg.rd_mask_duplicates)
        loss = loss + mcfg.lambda_box * l_box + mcfg.lambda_rd * l_rd
        if depth == 0:
            logs.update(box=l_box.item(), l1=parts["l1"], giou=parts["giou"], rd=l_rd.item(), targets=n_targets)
    return loss, logs


# ----------------------------------------------------------------------------- the plug-in
@functools.lru_cache(maxsize=2)
def _partworld(seed: int, n_train: int, n_test: int, image_size: int, n_val: int = 0):
    """The default data: a PartWorld generated in memory (and ``n_val`` held-out images of its seen classes, the
    "val" draw; None when 0); cached, so the models of one experiment that share a seed share the world."""
    world = PartWorld(PartWorldConfig(n_train=n_train, n_test_per_class=n_test, image_size=image_size), seed=seed)
    train, test = world.sample("train"), world.sample("test")
    return world.vocabulary_texts(), train, test, world.class_table(), world.sample("val", n_val) if n_val else None


def _plateau(model: "GrainModel", val_ds, tokenizer, mcfg: Config, batch_size: int, steps_per_epoch: int, device):
    """The early-stopping wrapper (plateau.Plateau) on the model's own objective over ``val_ds``."""
    from clipcore.methods.grain.plateau import Plateau
    batches = list(region_loader(val_ds, tokenizer, batch_size, seed=0, shuffle=False, drop_last=False,
                                 max_regions=mcfg.num_region_queries))   # one fixed caption draw (epoch 0)

    def val_loss() -> float:
        total = 0.0
        for b in batches:
            b = b.to(device)
            text = model.encode_text(b.tokens).float()
            total += grain_loss(model(b.images), b, text, model.logit_scale_value(), mcfg)[0].item() * len(b.images)
        return total / len(val_ds)
    return Plateau(model, val_loss, every=mcfg.val_every or steps_per_epoch, patience=mcfg.patience,
                   min_delta=mcfg.min_delta)


def build(cfg: TrainConfig, mcfg: Config, device) -> Task:
    """The GRAIN task for clipcore.train (cfg: TrainConfig; mcfg: this module's Config)."""
    init = ckpt_io.load(cfg.init) if cfg.init else None
    if init is not None and "model_config" not in init:   # an open_clip base: GRAIN rebuilds clipcore towers
        raise ConfigError(f"--method grain --init {cfg.init}: GRAIN builds its region decoder on clipcore's CLIP "
                          "towers and starts from a clipcore CLIP checkpoint; this one holds "
                          f"{init.get('open_clip_model') and 'the open_clip model ' + init['open_clip_model'] or 'no clipcore model'}"
                          " (train a base with --model tiny-vit, or start GRAIN without --init)")
    model_cfg = config_from_dict(init["model_config"]) if init else get_config(cfg.model)
    s, q = model_cfg.vision.image_size, mcfg.num_region_queries
    data_kw = dict(image_size=s, seed=cfg.seed, caption_mix=mcfg.caption_mix,
                   shuffle_descriptions=mcfg.shuffle_descriptions, score_threshold=mcfg.score_threshold, max_regions=q)
    table = test = val_ds = None
    if cfg.train_data is None:
        vocab_texts, tr, te, table, va = _partworld(cfg.seed if mcfg.world_seed < 0 else mcfg.world_seed,
                                                     mcfg.world_train, mcfg.world_test_per_class, s, mcfg.val_size)
        train_ds = from_records(tr.records, tr.images, **data_kw)
        val_ds = from_records(va.records, va.images, **data_kw) if va is not None else None
        test_ds = from_records(te.records, te.images, image_size=s)
        test = (test_ds.all_images(), test_ds.labels, torch.from_numpy(te.parts).float())
    else:
        train_ds = load_annotations(cfg.train_data, **data_kw)
        if mcfg.val_size:
            if mcfg.val_size >= len(train_ds):
                raise ConfigError(f"--grain-val-size {mcfg.val_size} holds out all {len(train_ds)} rows of "
                                  f"{cfg.train_data}; use fewer")
            order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            train_ds, val_ds = train_ds.subset(order[mcfg.val_size:]), train_ds.subset(order[:mcfg.val_size])
        vocab_texts = [c for c in train_ds.captions] + [a for a in train_ds.aug_captions if a] \
            + [d for r in train_ds.regions for d in r.descriptions]
        root = Path(cfg.train_data).parent
        if (root / "classes.json").is_file() and (root / "test.jsonl").is_file():     # a written PartWorld
            table = json.loads((root / "classes.json").read_text())
            test = _load_test(root / "test.jsonl", s)
            vocab_texts += [w for c in table["classes"] for w in [c["name"], *c["descriptors"]]] + table["templates"]
    kind = mcfg.tokenizer if mcfg.tokenizer != "auto" else ("word" if table is not None else model_cfg.tokenizer)
    ctx = mcfg.context_length or model_cfg.text.context_length
    if init and init.get("tokenizer"):
        tokenizer = ckpt_io.tokenizer_for(model_cfg, init["tokenizer"])
    elif kind == "word":
        tokenizer = WordTokenizer.from_texts(vocab_texts, ctx)
        model_cfg = dataclasses.replace(model_cfg, tokenizer="word", text=dataclasses.replace(
            model_cfg.text, vocab_size=tokenizer.vocab_size, context_length=ctx))
    else:
        model_cfg = dataclasses.replace(model_cfg, tokenizer=kind, text=dataclasses.replace(model_cfg.text, context_length=ctx))
        tokenizer = ckpt_io.tokenizer_for(model_cfg)
    model = GrainModel(model_cfg, mcfg).to(device)
    loaded = ""
    if init:
        missing, unexpected = model.load_state_dict(init["model"], strict=False)
        loaded = f", init {cfg.init}: {len(init['model']) - len(unexpected)} tensors loaded, {len(missing)} new"

    def step(batch: RegionBatch):
        batch = batch.to(device)
        out = model(batch.images)
        text = model.encode_text(batch.tokens).float()
        return grain_loss(out, batch, text, model.logit_scale_value(), mcfg)

    steps_per_epoch = len(train_ds) // cfg.batch_size
    loader = lambda epoch, start: region_loader(train_ds, tokenizer, cfg.batch_size, seed=cfg.seed, epoch=epoch,  # noqa: E731
                                                start_batch=start, num_workers=cfg.workers, max_regions=q)
    stopper = _plateau(model, val_ds, tokenizer, mcfg, cfg.batch_size, steps_per_epoch, device) if val_ds else None

    def evaluate(split: str) -> dict[str, float]:
        res = evaluate_descriptions(model, tokenizer, *test[:2], table, parts=test[2], device=device)
        if stopper is None:
            return res
        stopper.finish()
        return {**res, **stopper.state()}

    n_params = num_params(model.visual) + num_params(model.text)
    return Task(
        model=model, steps_per_epoch=steps_per_epoch, loader=stopper.wrap(loader) if stopper else loader,
        step=step, evaluate=evaluate if test is not None else None, eval_splits=("test",) if test is not None else (),
        meta={"model_config": dataclasses.asdict(model_cfg), "grain_config": dataclasses.asdict(mcfg),
              "preprocess": preprocess_cfg(s, cfg.train_data is None).to_dict(),
              "tokenizer": tokenizer.state_dict() if hasattr(tokenizer, "state_dict") else None},
        describe=f"{len(train_ds)} annotated images ({'PartWorld, in memory' if cfg.train_data is None else cfg.train_data}), "
                 f"encoders {n_params / 1e6:.2f}M, {trainable_parameters(model) / 1e6:.2f}M trainable{loaded}"
                 + (f"; validation loss on {len(val_ds)} held-out images every {stopper.every} steps"
                    + (f", stop after {mcfg.patience} checks without improvement" if mcfg.patience else "")
                    if stopper else ""),
        held_out=f"PartWorld test images, {len(test[1])}" if test is not None else "none",
        finished=(lambda: stopper.stopped) if stopper else None,
    )


def preprocess_cfg(image_size: int, in_memory: bool) -> PreprocessCfg:
    """GRAIN's images: RGB, CLIP's mean/std, the whole image resized (boxes stay valid); PartWorld's in-memory
    images bilinearly (torch), files bicubically (PIL)."""
    return PreprocessCfg(image_size, 3, interpolation="bilinear" if in_memory else "bicubic", resize_mode="whole")


DEFAULT_DATA = "partworld"   # without --train-data: a PartWorld generated in memory


def eval_held_out(model, tokenizer, ckpt: dict, data: str | None, preprocess: PreprocessCfg, device) -> dict | None:
    """clipcore.eval of a GRAIN checkpoint: zero-shot accuracy by name, description and fusion, and grounding, on
    :func:`held_out` (primary: "all/name+desc/acc"); None when ``data`` holds no PartWorld class table."""
    test = held_out(ckpt, data, preprocess.image_size)
    if test is None:
        return None
    images, labels, parts, table = test
    res = evaluate_descriptions(model, tokenizer, images, labels, table, parts=parts, device=device)
    return {"primary": "all/name+desc/acc", **res}


def held_out(ckpt: dict, data: str | None, image_size: int) -> tuple[Tensor, Tensor, Tensor, dict] | None:
    """What GRAIN's zero-shot evaluation reads: (images (N, 3, S, S), labels (N,), clean parts (N, P, 4), class
    table). ``data`` None: the held-out set of the checkpoint's training data (its PartWorld regenerated from the
    recorded seed, or the test.jsonl beside a written PartWorld's annotation file); else a written PartWorld
    folder (classes.json + test.jsonl) or a test.jsonl beside a classes.json. None when there is no class table."""
    tc, mcfg = ckpt.get("train_config") or {}, Config(**ckpt["grain_config"])
    if data is None and tc.get("train_data") is None:
        seed = tc.get("seed", 0) if mcfg.world_seed < 0 else mcfg.world_seed
        _, _, te, table, _ = _partworld(seed, mcfg.world_train, mcfg.world_test_per_class, image_size)
        ds = from_records(te.records, te.images, image_size=image_size)
        return ds.all_images(), ds.labels, torch.from_numpy(te.parts).float(), table
    path = Path(data if data is not None else tc["train_data"])
    if data is not None and not path.is_dir() and path.suffix != ".jsonl":
        return None
    root, test = (path, path / "test.jsonl") if path.is_dir() else (path.parent, path if data is not None else path.parent / "test.jsonl")
    if not ((root / "classes.json").is_file() and test.is_file()):
        return None
    return (*_load_test(test, image_size), json.loads((root / "classes.json").read_text()))


def _load_test(path: Path, image_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """A written PartWorld's test.jsonl -> images (N, C, S, S) normalised, labels (N,), clean parts (N, P, 4) xyxy."""
    ds = load_annotations(path, image_size=image_size)
    rows = [json.loads(line) for line in open(path) if line.strip()]
    from PIL import Image
    parts = []
    for r, p in zip(rows, ds.paths):
        with Image.open(p) as im:
            w, h = im.size
        parts.append([[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in r["parts"]])
    return ds.all_images(), ds.labels, torch.tensor(parts, dtype=torch.float32)


def load(ckpt: dict, device: str | torch.device = "cpu") -> tuple[GrainModel, object]:
    """The model of a GRAIN checkpoint (``clipcore.methods.load_model`` calls this) -> (GrainModel, tokenizer)."""
    cfg = config_from_dict(ckpt["model_config"])
    model = GrainModel(cfg, Config(**ckpt["grain_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt_io.tokenizer_for(cfg, ckpt.get("tokenizer"))
