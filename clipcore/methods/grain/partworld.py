"""PartWorld: a synthetic world with ground truth for GRAIN (docs/methods.md, GRAIN §9).

An object is 3 parts (shape x colour x pattern) in a loose layout with position jitter, drawn on a background.
Classes come in sibling groups of 4 that differ in exactly one part (its colour and/or pattern): the fine-grained
structure. Class names are pseudo-words ("zorbel") with no compositional content. Whole groups are *novel*: their
names never occur in any training text and they have no training images, so only descriptions can name them
(the Products-2023 analogue). Annotations stand in for the three sources GRAIN trains on:

- ``caption``      web alt-text: "a photo of a zorbel", or with probability 0.3 a generic phrase;
- ``aug_caption``  an MLLM's caption naming 1-3 parts, attribute dropout 0.2, 5% wrong attributes;
- ``regions``      an open-vocabulary detector's output: per part "red striped circle" with its box, box jitter
                   +-10% of the size, drop 0.2, label swap between two parts 0.1, a score, plus low-score
                   distractors (score < 0.3, removed by the loader's threshold);

and test-time class descriptors (one phrase per part, 3 paraphrase templates). Clean part boxes are kept apart from
the noisy annotation boxes for the grounding diagnostics. Everything is deterministic in ``seed``.

    w = PartWorld(PartWorldConfig(), seed=0)
    s = w.sample("train", 1000)          # s.images (1000, 32, 32, 3) uint8, s.labels, s.parts (1000, 3, 4), s.records
    w.write("data/partworld")            # images/*.png + annotations.jsonl (train) + test.jsonl + classes.json
    w.sample("test", 200, domain="sketch")   # the same classes drawn as outlines on white (also "painting")

    python -m clipcore.methods.grain.partworld data/partworld --n-train 20000          # write() from the shell
    python -m clipcore.train --method grain --train-data data/partworld/annotations.jsonl
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipcore.errors import UserError, cli

SHAPES = ("circle", "square", "triangle", "bar")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.15), "blue": (0.1, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
           "purple": (0.55, 0.1, 0.75), "orange": (1.0, 0.55, 0.0), "cyan": (0.1, 0.85, 0.9), "pink": (1.0, 0.5, 0.75)}
PATTERNS = ("solid", "striped", "dotted")
SLOT_SHAPES = ("circle", "bar", "triangle")                 # fixed roles: head, body, tail
SLOT_CENTRES = ((0.30, 0.30), (0.50, 0.62), (0.72, 0.30))   # canonical layout, (x, y) in [0, 1]
SLOT_SIZES = (0.30, 0.42, 0.30)                              # part size relative to the image side
DOMAINS = ("photo", "sketch", "painting")
GENERIC = ("an object on a background", "a picture of a thing", "an image", "a small item on display",
           "a photo of an object", "something on a table")
NAME_TEMPLATES = ("a photo of a {c}", "a {c}", "an image of a {c}", "the {c}", "a picture of a {c}")
MLLM_TEMPLATES = ("a small thing with {p}", "an object which has {p}", "a thing made of {p}",
                  "a picture of something with {p}", "an item that has {p}")
DESCRIPTOR_TEMPLATES = ("has a {c} {p} {s}", "a {c} {p} {s}", "{c} {s} which is {p}")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "st", "tr")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "m", "x", "sk", "nd")


@dataclass(frozen=True)
class PartWorldConfig:
    n_groups: int = 50               # sibling groups; 50 x 4 = 200 classes
    group_size: int = 4
    novel_groups: int = 12           # whole groups held out of all training text and images (48 novel classes)
    image_size: int = 32
    n_train: int = 20_000
    n_test_per_class: int = 10
    free_shapes: bool = False        # False: slot k always has shape SLOT_SHAPES[k]; True: any shape per slot
    jitter: float = 0.06             # part position jitter (fraction of the image side)
    object_shift: float = 0.08       # whole-object shift
    generic_alt: float = 0.3         # alt-text: probability of a generic phrase instead of the name
    attr_dropout: float = 0.2        # MLLM caption: drop a mentioned part's colour or pattern word
    attr_error: float = 0.05         # MLLM caption: replace an attribute by a wrong one
    box_jitter: float = 0.10         # detector: box coordinates +- this fraction of the box size
    box_drop: float = 0.2            # detector: miss a part
    label_swap: float = 0.1          # detector: swap the descriptions of two parts
    distractor: float = 0.3          # detector: probability of one low-score (< 0.3) spurious box


@dataclass
class ClassDef:
    name: str
    parts: tuple[tuple[str, str, str], ...]   # per slot (shape, colour, pattern)
    group: int
    seen: bool
    descriptors: tuple[str, ...]             # one phrase per part (test-time descriptors)


@dataclass
class Sample:
    images: np.ndarray       # (N, S, S, 3) uint8
    labels: np.ndarray       # (N,) class index
    parts: np.ndarray        # (N, 3, 4) clean part boxes, normalised xyxy
    records: list[dict]      # annotation records (caption, aug_caption, regions with pixel xyxy boxes, score)


def part_phrase(part: tuple[str, str, str]) -> str:
    shape, colour, pattern = part
    return f"{colour} {pattern} {shape}"


def _names(rng: np.random.Generator, n: int) -> list[str]:
    out: dict[str, None] = {}            # insertion-ordered: deterministic (a set's order depends on PYTHONHASHSEED)
    while len(out) < n:
        k = rng.integers(2, 4)
        w = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(k - 1)) + rng.choice(_ONSETS) \
            + rng.choice(_NUCLEI) + rng.choice(_CODAS)
        if 4 <= len(w) <= 9:
            out[w] = None
    return list(out)


class PartWorld:
    """Classes, renderer and annotation generators of one world; ``seed`` fixes the classes and every sample."""

    def __init__(self, cfg: PartWorldConfig = PartWorldConfig(), seed: int = 0):
        self.cfg, self.seed = cfg, seed
        rng = np.random.default_rng([seed, 0])
        names = _names(rng, cfg.n_groups * cfg.group_size)
        colours, combos = list(COLOURS), [(c, p) for c in COLOURS for p in PATTERNS]
        novel = set(rng.choice(cfg.n_groups, cfg.novel_groups, replace=False).tolist())
        self.classes: list[ClassDef] = []
        taken: set = set()
        for g in range(cfg.n_groups):
            while True:
                shapes = [SLOT_SHAPES[k] if not cfg.free_shapes else SHAPES[rng.integers(4)] for k in range(3)]
                base = [(shapes[k], colours[rng.integers(8)], PATTERNS[rng.integers(3)]) for k in range(3)]
                slot = int(rng.integers(3))
                picks = rng.choice(len(combos), cfg.group_size, replace=False)
                defs = []
                for p in picks:
                    parts = list(base)
                    parts[slot] = (shapes[slot], *combos[p])
                    defs.append(tuple(parts))
                if not taken.intersection(defs):
                    taken.update(defs)
                    break
            for j, parts in enumerate(defs):
                cid = len(self.classes)
                desc = tuple(DESCRIPTOR_TEMPLATES[(cid + k) % len(DESCRIPTOR_TEMPLATES)].format(s=s, c=c, p=p)
                             for k, (s, c, p) in enumerate(parts))
                self.classes.append(ClassDef(names[cid], parts, g, g not in novel, desc))
        self.seen = np.array([c.seen for c in self.classes])
        self.groups = np.array([c.group for c in self.classes])

    # ------------------------------------------------------------------------------------------ text
    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    def vocabulary_texts(self) -> list[str]:
        """Texts covering every word of the world (names of novel classes included): build a tokenizer from these."""
        words = list(COLOURS) + list(PATTERNS) + list(SHAPES) + self.classnames
        return [" ".join(words)] + list(GENERIC) + list(NAME_TEMPLATES) + list(MLLM_TEMPLATES) \
            + list(DESCRIPTOR_TEMPLATES) + ["which is which has which and"]

    # Annotation generators take one row ``u`` of pre-drawn uniforms (drawing per call from the Generator costs
    # ~20 us each; one (n, 32) draw per sample keeps 20k annotations under a second).
    def _alt_text(self, u: np.ndarray, c: ClassDef) -> str:
        if u[0] < self.cfg.generic_alt:
            return GENERIC[int(u[1] * len(GENERIC))]
        return NAME_TEMPLATES[int(u[1] * len(NAME_TEMPLATES))].format(c=c.name)

    def _mllm_caption(self, u: np.ndarray, c: ClassDef) -> str:
        cfg, k = self.cfg, 1 + int(u[0] * 3)
        slots = sorted(np.argsort(u[1:4])[:k])                      # k distinct parts, uniformly
        phrases = []
        for j, slot in enumerate(slots):
            shape, colour, pattern = c.parts[slot]
            v = u[4 + 4 * j: 8 + 4 * j]
            if v[0] < cfg.attr_error:
                colour = list(COLOURS)[int(v[1] * 8)]
            if v[0] > 1 - cfg.attr_error:
                pattern = PATTERNS[int(v[1] * 3)]
            if v[2] < cfg.attr_dropout:
                words = [colour, shape] if v[3] < 0.5 else [pattern, shape]
            else:
                words = [colour, pattern, shape]
            phrases.append("a " + " ".join(words))
        p = phrases[0] if k == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return MLLM_TEMPLATES[int(u[16] * len(MLLM_TEMPLATES))].format(p=p)

    def _regions(self, u: np.ndarray, c: ClassDef, parts_xyxy: np.ndarray) -> list[dict]:
        cfg, s = self.cfg, self.cfg.image_size
        desc = [part_phrase(p) for p in c.parts]
        if u[0] < cfg.label_swap:
            a, b = np.argsort(u[1:4])[:2]
            desc[a], desc[b] = desc[b], desc[a]
        out = []
        for k in range(3):
            if u[4 + k] < cfg.box_drop:
                continue
            x1, y1, x2, y2 = parts_xyxy[k]
            w, h = x2 - x1, y2 - y1
            j = cfg.box_jitter * (2 * u[7 + 4 * k: 11 + 4 * k] - 1)
            box = [min(max(v, 0.0), 1.0) * s for v in (x1 + j[0] * w, y1 + j[1] * h, x2 + j[2] * w, y2 + j[3] * h)]
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            out.append({"description": desc[k], "bbox": [round(float(v), 2) for v in box],
                        "score": round(0.35 + 0.6 * float(u[19 + k]), 3)})
        if u[22] < cfg.distractor:
            x1, y1, w, h = 0.7 * u[23], 0.7 * u[24], 0.1 + 0.2 * u[25], 0.1 + 0.2 * u[26]
            phrase = f"{list(COLOURS)[int(u[27] * 8)]} {PATTERNS[int(u[28] * 3)]} {SHAPES[int(u[29] * 4)]}"
            out.append({"description": phrase,
                        "bbox": [round(float(v) * s, 2) for v in (x1, y1, min(1.0, x1 + w), min(1.0, y1 + h))],
                        "score": round(0.05 + 0.24 * float(u[30]), 3)})
        return out

    # ------------------------------------------------------------------------------------------ images
    def _layout(self, rng, n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> centres (n, 3, 2) and sizes (n, 3) in [0, 1] units."""
        cfg = self.cfg
        centres = np.array(SLOT_CENTRES)[None] + rng.uniform(-cfg.jitter, cfg.jitter, (n, 3, 2)) \
            + rng.uniform(-cfg.object_shift, cfg.object_shift, (n, 1, 2))
        sizes = np.array(SLOT_SIZES)[None] * rng.uniform(0.85, 1.15, (n, 3))
        return centres, sizes

    def render(self, labels: np.ndarray, rng: np.random.Generator, domain: str = "photo"
               ) -> tuple[np.ndarray, np.ndarray]:
        """Draw objects of classes ``labels`` (n,) -> images (n, S, S, 3) uint8 and clean part boxes (n, 3, 4) xyxy.

        Domains: "photo" (filled, textured parts on a noisy grey background), "sketch" (part outlines and pattern
        marks in the part's colour on white), "painting" (colour-shifted, blurred parts on a smooth coloured wash).
        """
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        n, s = len(labels), self.cfg.image_size
        centres, sizes = self._layout(rng, n)
        f32 = np.float32
        yy, xx = ((np.mgrid[0:s, 0:s] + 0.5) / s).astype(f32)       # pixel centres in [0, 1]
        py, px = np.mgrid[0:s, 0:s]
        marks = {"solid": np.zeros((s, s), bool), "striped": ((px + py) // 2) % 2 == 0,
                 "dotted": (px % 4 < 2) & (py % 4 < 2)}
        if domain == "photo":
            img = rng.uniform(0.3, 0.6, (n, 1, 1, 1)).astype(f32) + 0.08 * rng.standard_normal((n, s, s, 3), f32)
        elif domain == "sketch":
            img = np.ones((n, s, s, 3), f32)
        else:
            wash = rng.uniform(0.4, 0.9, (n, 1, 1, 3)).astype(f32)
            img = wash + 0.08 * np.sin(6 * xx[None, ..., None] + rng.uniform(0, 6, (n, 1, 1, 1)).astype(f32))
        boxes = np.zeros((n, 3, 4))
        defs = [self.classes[c].parts for c in labels]
        for k in range(3):
            cx, cy, r = centres[:, k, 0], centres[:, k, 1], sizes[:, k] / 2
            shape = np.array([SHAPES.index(d[k][0]) for d in defs])
            dx = (xx[None] - cx[:, None, None].astype(f32)) / r[:, None, None].astype(f32)
            dy = (yy[None] - cy[:, None, None].astype(f32)) / r[:, None, None].astype(f32)
            sh = shape[:, None, None]
            mask = ((sh == 0) & (dx * dx + dy * dy <= 1)) \
                | ((sh == 1) & (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)) \
                | ((sh == 2) & (dy >= -1) & (dy <= 1) & (np.abs(dx) <= (dy + 1) / 2)) \
                | ((sh == 3) & (np.abs(dx) <= 1) & (np.abs(dy) <= 0.45))
            ext_x = np.where(shape == 1, 0.85, 1.0) * r
            ext_y = np.where(shape == 1, 0.85, np.where(shape == 3, 0.45, 1.0)) * r
            boxes[:, k] = np.stack([cx - ext_x, cy - ext_y, cx + ext_x, cy + ext_y], -1)
            colour = np.array([COLOURS[d[k][1]] for d in defs], f32)[:, None, None, :]
            mk = np.stack([marks[d[k][2]] for d in defs])                       # (n, s, s)
            if domain == "sketch":
                inner = mask & np.roll(mask, 1, 1) & np.roll(mask, -1, 1) & np.roll(mask, 1, 2) & np.roll(mask, -1, 2)
                draw = (mask & ~inner) | (inner & mk)
                np.copyto(img, np.broadcast_to(colour * 0.85, img.shape), where=draw[..., None])
            else:
                if domain == "painting":
                    colour = 0.6 * colour + 0.4 * colour[..., [1, 2, 0]] + rng.normal(0, 0.05, (n, 1, 1, 3)).astype(f32)
                np.copyto(img, colour * np.where(mk, f32(0.35), f32(1.0))[..., None], where=mask[..., None])
        if domain == "painting":   # 3 x 3 box blur: soft strokes
            pad = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
            img = sum(pad[:, i:i + s, j:j + s] for i in range(3) for j in range(3)) / 9
        return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), np.clip(boxes, 0, 1)

    # ------------------------------------------------------------------------------------------ samples
    def sample(self, split: str, n: int | None = None, domain: str = "photo") -> Sample:
        """``train``: n images of seen classes only (uniform), annotated; ``val``: the same, an independent draw (a
        held-out split of the training world); ``test``: n_test_per_class images of every class (seen and novel),
        annotated too (captions of novel classes are never used for training)."""
        split_id = {"train": 1, "test": 2, "val": 3}[split]
        rng = np.random.default_rng([self.seed, split_id, DOMAINS.index(domain)])
        if split in ("train", "val"):
            seen = np.flatnonzero(self.seen)
            labels = seen[rng.integers(len(seen), size=n or self.cfg.n_train)]
        else:
            per = n or self.cfg.n_test_per_class
            labels = np.repeat(np.arange(len(self.classes)), per)
        images, parts = self.render(labels, rng, domain)
        u = rng.random((len(labels), 3, 32))
        records = []
        for i, c in enumerate(labels):
            cd = self.classes[c]
            records.append({"caption": self._alt_text(u[i, 0], cd), "aug_caption": self._mllm_caption(u[i, 1], cd),
                            "regions": self._regions(u[i, 2], cd, parts[i]), "label": int(c)})
        return Sample(images, labels, parts, records)

    def class_table(self) -> dict:
        """classes.json content: names, parts, groups, seen flags, descriptors, zero-shot templates, config."""
        return {"classes": [asdict(c) for c in self.classes], "templates": list(NAME_TEMPLATES),
                "config": asdict(self.cfg), "seed": self.seed}

    def write(self, root: str | Path, domain: str = "photo") -> Path:
        """Write images/{train,test}/NNNNNN.png, annotations.jsonl (train), test.jsonl (+ "label", "parts" clean
        pixel boxes) and classes.json under ``root``. Returns the path of annotations.jsonl."""
        from PIL import Image
        root = Path(root)
        s = self.cfg.image_size
        for split, fname in (("train", "annotations.jsonl"), ("test", "test.jsonl")):
            smp = self.sample(split, domain=domain)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            with open(root / fname, "w") as f:
                for i, rec in enumerate(smp.records):
                    rel = f"images/{split}/{i:06d}.png"
                    Image.fromarray(smp.images[i]).save(root / rel)
                    row = {"image": rel, **rec}
                    if split == "test":
                        row["parts"] = [[round(float(v) * s, 2) for v in b] for b in smp.parts[i]]
                    f.write(json.dumps(row) + "\n")
        (root / "classes.json").write_text(json.dumps(self.class_table(), indent=1))
        return root / "annotations.jsonl"


@cli
def main(argv: list[str] | None = None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m clipcore.methods.grain.partworld",
                                description="Write a PartWorld in the GRAIN annotation format (images + JSON lines).")
    p.add_argument("out", help="folder to write: images/, annotations.jsonl, test.jsonl, classes.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=PartWorldConfig.n_train)
    p.add_argument("--n-test-per-class", type=int, default=PartWorldConfig.n_test_per_class)
    p.add_argument("--image-size", type=int, default=PartWorldConfig.image_size)
    p.add_argument("--domain", choices=DOMAINS, default="photo")
    a = p.parse_args(argv)
    for flag, value, least in (("--n-train", a.n_train, 1), ("--n-test-per-class", a.n_test_per_class, 1),
                               ("--image-size", a.image_size, 8)):
        if value < least:
            raise UserError(f"{flag} {value}: use at least {least}"
                            f"{' (smaller images cannot show the parts and their patterns)' if least > 1 else ''}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise UserError(f"{a.out} is a file; give a folder to write the world into")
    cfg = PartWorldConfig(n_train=a.n_train, n_test_per_class=a.n_test_per_class, image_size=a.image_size)
    try:
        path = PartWorld(cfg, seed=a.seed).write(a.out, domain=a.domain)
    except OSError as e:   # a folder that cannot be created or written (permissions, full disk, a file in the way)
        raise UserError(f"cannot write the world into {a.out}: {e}") from e
    print(f"wrote {path} ({a.n_train} training images) and {Path(a.out) / 'test.jsonl'}")


if __name__ == "__main__":
    main()
