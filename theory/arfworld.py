"""A multi-domain world with ground truth for ARF (docs/methods.md, ARF §6), on PartWorld's classes and renderer.

The same part-based classes are drawn in three domains (photo, sketch, painting; ``clipcore.methods.grain.partworld.render``).
Texts come from generators whose content is known:

- ``rich``       the stage-0 "web corpus" and the candidate pool: "a sketch of a zorbel with a red striped circle
                 and a blue bar" (name + 1-3 parts + domain word; attribute dropout and errors);
- ``caption``    the captioner of L_TCA: the same without the class name ("a photo of a thing with ...");
- ``prompt``     the finetuning target and the zero-shot prompt: "a photo of a zorbel".

Splits (whole sibling groups, so a zero-shot class never has an ID sibling): ID classes are finetuned on photos
with prompts only; the shift test is the ID classes as sketches and paintings; the zero-shot test is the other
classes in all domains. Stage-0 corpus and pool are disjoint draws over all classes and domains; the pool options
``pool_domains`` and ``pool_exclude_zs`` (docs/methods.md, ARF §6) narrow the pool's draw, keeping its size.

    w = ArfWorld(ArfWorldConfig(), seed=0)
    x, y, d = w.draw("pretrain")           # images (N, 3, S, S) float in [-1, 1], labels (N,), domain ids (N,)
    w.rich_captions(y, d, "pretrain")      # one caption per image
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipcore.methods.grain.partworld import COLOURS, DOMAINS, PATTERNS, PartWorld, PartWorldConfig, part_phrase


@dataclass(frozen=True)
class ArfWorldConfig:
    n_groups: int = 10               # sibling groups of 4 classes: 40 classes
    id_groups: int = 5               # groups finetuned (ID); the rest are the zero-shot classes
    image_size: int = 16
    n_pretrain: int = 6000           # stage-0 pairs: all classes x all domains
    n_pool: int = 3000               # candidate pool, disjoint from stage 0
    n_finetune: int = 20             # finetune images per ID class (photo)
    n_test: int = 15                 # test images per class and domain
    attr_dropout: float = 0.2        # a mentioned part loses its colour or pattern word
    attr_error: float = 0.05         # a mentioned attribute is replaced by a wrong one
    pool_domains: tuple[str, ...] | None = None  # pool domains (None: all): do shift gains need other-domain pairs?
    pool_exclude_zs: bool = False    # pool without zero-shot classes: is ARF-3's retention leakage from the pool?
    name_rate: float = 1.0           # chance that a rich caption (stage 0, pool) names its class; the others say
                                     # "a {domain} of a thing with ..." (weaker zero-shot names: finetuning matters)
    photo_noise: float = 0.0         # std of extra Gaussian pixel noise on photos (images in [-1, 1]): a noisier
                                     # finetune domain, so finetuned ID accuracy stays off its ceiling

    def __post_init__(self):
        doms = self.pool_domains
        if doms is not None:
            if isinstance(doms, str) or not isinstance(doms, (tuple, list)):
                raise ValueError(f"pool_domains={doms!r}: pass a tuple of domain names, e.g. ('photo',), "
                                 "or None for all")
            if len(doms) == 0:
                raise ValueError(f"pool_domains=(): an empty pool; pass None for all domains or some of {DOMAINS}")
            bad = [d for d in doms if d not in DOMAINS]
            if bad or len(set(doms)) != len(doms):
                why = f"unknown {bad}" if bad else "a repeated name"
                raise ValueError(f"pool_domains={tuple(doms)!r}: {why}; choose distinct names from {DOMAINS}")
            object.__setattr__(self, "pool_domains", tuple(doms))
        if not isinstance(self.pool_exclude_zs, (bool, np.bool_)):
            raise ValueError(f"pool_exclude_zs={self.pool_exclude_zs!r}: pass True or False")
        if not self.photo_noise >= 0.0:
            raise ValueError(f"photo_noise={self.photo_noise!r}: pass a standard deviation >= 0")
        if not 0.0 < self.name_rate <= 1.0:
            raise ValueError(f"name_rate={self.name_rate!r}: pass a probability in (0, 1] (the share of rich "
                             "captions that name their class)")


SPLIT_IDS = {"pretrain": 11, "pool": 12, "finetune": 13, "test": 14}


class ArfWorld:
    def __init__(self, cfg: ArfWorldConfig = ArfWorldConfig(), seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.parts = PartWorld(PartWorldConfig(n_groups=cfg.n_groups, novel_groups=0, image_size=cfg.image_size), seed)
        groups = np.random.default_rng([seed, 7]).permutation(cfg.n_groups)
        self.id_classes = np.flatnonzero(np.isin(self.parts.groups, groups[:cfg.id_groups]))
        self.zs_classes = np.flatnonzero(~np.isin(self.parts.groups, groups[:cfg.id_groups]))

    @property
    def classnames(self) -> list[str]:
        return self.parts.classnames

    def vocabulary_texts(self) -> list[str]:
        return [" ".join(self.classnames + list(COLOURS) + list(PATTERNS) + list(DOMAINS)),
                "a of with and thing circle bar triangle square"]

    def draw(self, split: str, domain: str | None = None, classes: np.ndarray | None = None):
        """Images of one split -> (images (N, 3, S, S) float in [-1, 1], labels (N,), domain ids (N,)).

        pretrain/pool: uniform over all classes and domains (the pool only over ``cfg.pool_domains`` and, with
        ``cfg.pool_exclude_zs``, the ID classes; same size, and the default options give the same pool); finetune:
        ID classes, photo, n_finetune each; test: ``classes`` (default all) x n_test in ``domain``."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, SPLIT_IDS[split], DOMAINS.index(domain) if domain else 9])
        if split in ("pretrain", "pool"):
            n = cfg.n_pretrain if split == "pretrain" else cfg.n_pool
            cls, dom = np.arange(len(self.classnames)), np.arange(len(DOMAINS))
            if split == "pool":
                cls, dom = self._pool_support()
            labels = cls[rng.integers(len(cls), size=n)]   # all classes/domains: the plain integers draw, unchanged
            doms = dom[rng.integers(len(dom), size=n)]
        else:
            classes = self.id_classes if split == "finetune" else (np.arange(len(self.classnames)) if classes is None else classes)
            labels = np.repeat(classes, cfg.n_finetune if split == "finetune" else cfg.n_test)
            doms = np.full(len(labels), DOMAINS.index(domain or "photo"))
        images = np.zeros((len(labels), cfg.image_size, cfg.image_size, 3), np.uint8)
        for d in np.unique(doms):
            at = np.flatnonzero(doms == d)
            images[at] = self.parts.render(labels[at], rng, DOMAINS[d])[0]
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        photo = torch.from_numpy(doms == DOMAINS.index("photo"))
        if cfg.photo_noise > 0 and bool(photo.any()):     # drawn after the renders: photo_noise = 0 changes nothing
            noise = rng.standard_normal(x.shape, np.float32)
            x = torch.where(photo[:, None, None, None], (x + cfg.photo_noise * torch.from_numpy(noise)).clamp(-1, 1), x)
        return x, torch.from_numpy(labels).long(), torch.from_numpy(doms).long()

    def _pool_support(self) -> tuple[np.ndarray, np.ndarray]:
        """(classes, domain ids) the pool is drawn over, from the options pool_exclude_zs and pool_domains."""
        cfg = self.cfg
        cls = self.id_classes if cfg.pool_exclude_zs else np.arange(len(self.classnames))
        if len(cls) == 0:
            raise ValueError(f"pool_exclude_zs=True with id_groups={cfg.id_groups}: no class is left for the pool; "
                             "set id_groups > 0 or pool_exclude_zs=False")
        dom = np.arange(len(DOMAINS)) if cfg.pool_domains is None else \
            np.array([DOMAINS.index(d) for d in cfg.pool_domains])
        return cls, dom

    def _describe(self, c: int, rng: np.random.Generator) -> str:
        """1-3 of the class's parts, with attribute dropout and errors."""
        parts = self.parts.classes[c].parts
        k = 1 + int(rng.integers(3))
        phrases = []
        for slot in sorted(rng.choice(3, k, replace=False)):
            shape, colour, pattern = parts[slot]
            if rng.random() < self.cfg.attr_error:
                colour = list(COLOURS)[rng.integers(len(COLOURS))]
            words = part_phrase((shape, colour, pattern)).split()
            if rng.random() < self.cfg.attr_dropout:
                words.pop(int(rng.integers(2)))
            phrases.append("a " + " ".join(words))
        return phrases[0] if k == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def rich_captions(self, labels: torch.Tensor, domains: torch.Tensor, split: str) -> list[str]:
        """Web-corpus captions: "a {domain} of a {name} with {parts}", the name with probability ``name_rate``
        (else "thing"; its own random stream, so name_rate = 1 gives the captions it always gave)."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[split], 99])
        named = np.random.default_rng([self.seed, SPLIT_IDS[split], 97]).random(len(labels)) < self.cfg.name_rate
        return [f"a {DOMAINS[d]} of a {self.classnames[c] if n else 'thing'} with {self._describe(c, rng)}"
                for c, d, n in zip(labels.tolist(), domains.tolist(), named.tolist())]

    def captioner(self, labels: torch.Tensor, domains: torch.Tensor, per_image: int = 2) -> list[list[str]]:
        """The captioner of L_TCA: appearance and domain, never the class name; ``per_image`` samples each."""
        rng = np.random.default_rng([self.seed, 98])
        return [[f"a {DOMAINS[d]} of a thing with {self._describe(c, rng)}" for _ in range(per_image)]
                for c, d in zip(labels.tolist(), domains.tolist())]
