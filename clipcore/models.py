"""CLIP from scratch: image towers (ViT, conv, linear, MLP), a causal text transformer, the CLIP wrapper,
typed configs and named presets.

    from clipcore.models import build_model, get_config
    model = build_model("tiny")                       # or build_model(get_config("base", embed_dim=256))
    img = model.encode_image(images)                  # (B, embed_dim), L2-normalised
    txt = model.encode_text(tokens)                   # (B, embed_dim)
    logit_scale = model.logit_scale_value()           # exp(parameter), clamped at 100

Architecture follows Radford et al. 2021 (pre-norm transformer blocks, CLS/EOT pooling, linear
projections, learnable temperature initialised at 1/0.07). Sizes live in the presets at the bottom.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from clipcore.errors import ConfigError


# ----------------------------------------------------------------------------- configs
@dataclass
class VisionConfig:
    kind: str = "vit"            # vit | conv | linear | mlp
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 4          # vit
    width: int = 128             # vit width; mlp hidden width
    layers: int = 4              # vit blocks; mlp hidden layers
    heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = "cls"            # vit: cls | mean
    channels: tuple[int, ...] = (32, 64, 128)   # conv: one stage per entry, each halves the resolution
    input_dim: int = 0           # linear/mlp: flat input dimension (0: in_channels * image_size**2)


@dataclass
class TextConfig:
    kind: str = "transformer"    # transformer | linear | mlp
    vocab_size: int = 49408      # open_clip's BPE vocabulary
    context_length: int = 77
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    input_dim: int = 0           # linear/mlp: the input is a (B, input_dim) float vector, not tokens


@dataclass
class CLIPConfig:
    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: str = "bpe"       # bpe (open_clip's vocabulary) | word (synthetic worlds) | none (vector text)
    normalize: bool = True       # L2-normalise embeddings (CLIP); False for raw-embedding theory runs
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0
    learn_logit_scale: bool = True


def config_from_dict(d: dict) -> CLIPConfig:
    """Inverse of ``dataclasses.asdict`` (checkpoints store configs as plain dicts)."""
    d = dict(d)
    vision = dict(d.pop("vision", {}))
    if "channels" in vision:
        vision["channels"] = tuple(vision["channels"])
    return CLIPConfig(vision=VisionConfig(**vision), text=TextConfig(**d.pop("text", {})), **d)


# ----------------------------------------------------------------------------- transformer
class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.ln_2(x))


def _init_transformer(blocks: nn.ModuleList, width: int) -> None:
    # CLIP's scheme: attention/MLP input weights ~ width^-0.5, output weights scaled by depth.
    proj_std = width**-0.5 * (2 * len(blocks)) ** -0.5
    for blk in blocks:
        nn.init.normal_(blk.qkv.weight, std=width**-0.5)
        nn.init.normal_(blk.out.weight, std=proj_std)
        nn.init.normal_(blk.mlp[0].weight, std=(2 * width) ** -0.5)
        nn.init.normal_(blk.mlp[2].weight, std=proj_std)
        for lin in (blk.qkv, blk.out, blk.mlp[0], blk.mlp[2]):
            nn.init.zeros_(lin.bias)


# ----------------------------------------------------------------------------- image towers
class ViT(nn.Module):
    """(B, C, H, W) -> (B, embed_dim). Patch embedding, [CLS] + learned positions, pre-norm blocks."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.pool not in ("cls", "mean"):
            raise ValueError(f"vision.pool must be 'cls' or 'mean', got {cfg.pool!r}")
        w, n = cfg.width, (cfg.image_size // cfg.patch_size) ** 2
        self.pool, self.grad_checkpointing = cfg.pool, False
        self.patch = nn.Conv2d(cfg.in_channels, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(w) * w**-0.5)
        self.pos = nn.Parameter(torch.randn(n + 1, w) * w**-0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, embed_dim) * w**-0.5)
        _init_transformer(self.blocks, w)

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + N, width) final-layer tokens ([CLS] first), after ln_post."""
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1) + self.pos
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return self.ln_post(x)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        return (t[:, 0] if self.pool == "cls" else t[:, 1:].mean(1)) @ self.proj


class ConvTower(nn.Module):
    """(B, C, H, W) -> (B, embed_dim). Small VGG-style CNN (conv-BN-ReLU x2 per stage, stride-2 pooling),
    global average pool, linear projection. The CPU-friendly tower of the ``tiny`` preset: on 28-32 px
    images a conv tower converges far faster than a ViT of equal cost (measured on animal-mnist on 2 CPU cores:
    CLIP with a 4-layer width-128 ViT, 64 tokens, reached 34 % held-out zero-shot after 280 s; with this tower as
    image tower, untuned, 80 % after 118 s)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        layers, c_in = [], cfg.in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.features(x).mean((2, 3)))


class VectorTower(nn.Module):
    """(B, input_dim) or (B, C, H, W) flattened -> (B, embed_dim). ``layers == 0``: the linear map
    f(x) = W x of the theory paper (no bias); otherwise an MLP with GELU hidden layers of ``width``."""

    def __init__(self, input_dim: int, embed_dim: int, width: int = 0, layers: int = 0):
        super().__init__()
        if input_dim <= 0:
            raise ValueError(f"linear/mlp towers need input_dim > 0, got {input_dim}")
        if layers == 0:
            self.net = nn.Linear(input_dim, embed_dim, bias=False)
        else:
            dims = [input_dim] + [width] * layers
            mods = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.GELU())]
            self.net = nn.Sequential(*mods, nn.Linear(width, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


# ----------------------------------------------------------------------------- text tower
class TextTransformer(nn.Module):
    """(B, L) token ids -> (B, embed_dim). Causal pre-norm transformer pooled at the EOT token, which
    both clipcore tokenizers place as the last non-padding (id 0) token of each row."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        w = cfg.width
        self.context_length, self.grad_checkpointing = cfg.context_length, False
        self.token = nn.Embedding(cfg.vocab_size, w)
        self.pos = nn.Parameter(torch.randn(cfg.context_length, w) * 0.01)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, embed_dim) * w**-0.5)
        nn.init.normal_(self.token.weight, std=0.02)
        _init_transformer(self.blocks, w)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"text tokens must be (B, L<= {self.context_length}), got {tuple(tokens.shape)}")
        x = self.token(tokens) + self.pos[: tokens.shape[1]]
        for blk in self.blocks:
            x = (checkpoint(blk, x, causal=True, use_reentrant=False) if self.grad_checkpointing and self.training
                 else blk(x, causal=True))
        x = self.ln_final(x)
        eot = (tokens != 0).sum(1).clamp(min=1) - 1
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.proj


def build_vision(cfg: VisionConfig, embed_dim: int) -> nn.Module:
    if cfg.kind == "vit":
        return ViT(cfg, embed_dim)
    if cfg.kind == "conv":
        return ConvTower(cfg, embed_dim)
    if cfg.kind in ("linear", "mlp"):
        dim = cfg.input_dim or cfg.in_channels * cfg.image_size**2
        return VectorTower(dim, embed_dim, cfg.width, cfg.layers if cfg.kind == "mlp" else 0)
    raise ValueError(f"vision.kind must be vit, conv, linear or mlp, got {cfg.kind!r}")


def build_text(cfg: TextConfig, embed_dim: int) -> nn.Module:
    if cfg.kind == "transformer":
        return TextTransformer(cfg, embed_dim)
    if cfg.kind in ("linear", "mlp"):
        return VectorTower(cfg.input_dim, embed_dim, cfg.width, cfg.layers if cfg.kind == "mlp" else 0)
    raise ValueError(f"text.kind must be transformer, linear or mlp, got {cfg.kind!r}")


# ----------------------------------------------------------------------------- CLIP
def logit_scale_from(log_scale: Tensor, max_scale: float = 100.0, min_scale: float | None = None) -> Tensor:
    """The logit scale 1/tau of a learned log-scale parameter: exp(t) clamped to [min_scale, max_scale] (open_clip
    caps it at 100); the gradient is zero outside the range, as open_clip's clamp. Every model of clipcore (CLIP,
    the open_clip adapter, GRAIN's and RECO's scales) reads its scale through this."""
    return log_scale.clamp(min=None if min_scale is None else math.log(min_scale), max=math.log(max_scale)).exp()


class CLIP(nn.Module):
    """Two towers and a learnable logit scale ``exp(t)``, t initialised at log(1/0.07), capped at 100."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = build_vision(cfg.vision, cfg.embed_dim)
        self.text = build_text(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)), requires_grad=cfg.learn_logit_scale)

    def _out(self, x: Tensor, normalize: bool | None) -> Tensor:
        return F.normalize(x, dim=-1) if (self.cfg.normalize if normalize is None else normalize) else x

    def encode_image(self, images: Tensor, normalize: bool | None = None) -> Tensor:
        """(B, C, H, W) (or (B, input_dim) for vector towers) -> (B, embed_dim)."""
        return self._out(self.visual(images), normalize)

    def encode_text(self, text: Tensor, normalize: bool | None = None) -> Tensor:
        """(B, L) token ids (or (B, input_dim) vectors for vector towers) -> (B, embed_dim)."""
        return self._out(self.text(text), normalize)

    def input_size(self) -> tuple[int, int]:
        """(image_size, in_channels) the image tower expects: what the data pipeline resizes to."""
        return self.cfg.vision.image_size, self.cfg.vision.in_channels

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward instead of keeping its activations (less memory,
        about one more forward of compute); open_clip's method of the same name. Conv/vector towers ignore it."""
        for tower in (self.visual, self.text):
            if hasattr(tower, "grad_checkpointing"):
                tower.grad_checkpointing = enable

    def logit_scale_value(self) -> Tensor:
        """exp(t) clamped at ``max_logit_scale``; the gradient is zero above the cap (as open_clip's clamp)."""
        return logit_scale_from(self.logit_scale, self.cfg.max_logit_scale)

    def forward(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(text), self.logit_scale_value()


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- presets
PRESETS: dict[str, Callable[[], CLIPConfig]] = {}


def register(name: str):
    """Decorator: ``@register("mine") def mine() -> CLIPConfig``. Names are unique."""

    def deco(fn: Callable[[], CLIPConfig]):
        if name in PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        PRESETS[name] = fn
        return fn

    return deco


@register("tiny")
def _tiny() -> CLIPConfig:
    # CPU default (animal-mnist in <5 min on 2 cores): conv tower at 32 px, 2-layer text transformer, short context.
    return CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(kind="conv", image_size=32, in_channels=3, channels=(16, 32, 64)),
        text=TextConfig(context_length=16, width=128, layers=2, heads=4),
    )


@register("tiny-vit")
def _tiny_vit() -> CLIPConfig:
    # The ViT counterpart of tiny (64 tokens at 32 px): tests, throughput benchmark against open_clip.
    return CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(kind="vit", image_size=32, patch_size=4, width=128, layers=4, heads=4),
        text=TextConfig(context_length=16, width=128, layers=2, heads=4),
    )


@register("small")
def _small() -> CLIPConfig:
    # One GPU, small images: ViT-S/8 at 64 px (64 tokens), 6-layer text.
    return CLIPConfig(
        embed_dim=256,
        vision=VisionConfig(kind="vit", image_size=64, patch_size=8, width=384, layers=6, heads=6),
        text=TextConfig(context_length=32, width=256, layers=6, heads=4),
    )


@register("base")
def _base() -> CLIPConfig:
    # ViT-B/32 sizes (Radford et al. 2021): 224 px, patch 32, width 768 x 12; text 512 x 12, context 77.
    return CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(kind="vit", image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(context_length=77, width=512, layers=12, heads=8),
    )


@register("grain-tiny")
def _grain_tiny() -> CLIPConfig:
    # GRAIN on PartWorld (clipcore.methods.grain), CPU scale (docs/methods.md, GRAIN §2): ViT 32 px / patch 4 (64 tokens), width 128 x 4; text 128 x 2;
    # joint space 64.
    return CLIPConfig(embed_dim=64, vision=VisionConfig(kind="vit", image_size=32, patch_size=4, width=128, layers=4),
                      text=TextConfig(context_length=24, width=128, layers=2, heads=4), tokenizer="word")


@register("grain-xs")
def _grain_xs() -> CLIPConfig:
    # GRAIN, the quick tier of experiments/test_grain.py: ViT 32 px / patch 4, width 48 x 1; text 48 x 1 (~0.1 s/step at B=128).
    return CLIPConfig(embed_dim=48, vision=VisionConfig(kind="vit", image_size=32, patch_size=4, width=48, layers=1,
                                                        heads=4, mlp_ratio=2.0),
                      text=TextConfig(context_length=24, width=48, layers=1, heads=4, mlp_ratio=2.0), tokenizer="word")


def get_config(name: str, **overrides) -> CLIPConfig:
    """Preset by name, with overrides: top-level fields by name, tower fields as ``vision__width=64``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; registered: {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    for key, value in overrides.items():
        part, _, sub = key.partition("__")
        if sub:
            setattr(cfg, part, dataclasses.replace(getattr(cfg, part), **{sub: value}))
        else:
            cfg = dataclasses.replace(cfg, **{part: value})
    return cfg


def build_model(cfg: CLIPConfig | str) -> CLIP:
    return CLIP(get_config(cfg) if isinstance(cfg, str) else cfg)
