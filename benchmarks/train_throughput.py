"""Training throughput: samples/s of one clipcore train step against open_clip's twin model, same run.

One step = forward of both towers + contrastive loss + backward + AdamW step, on a fixed batch of random
images and tokens (data loading is not timed). The baseline is ``open_clip.CLIP`` built from the same
sizes (``pretrained=None``) with ``open_clip.ClipLoss``; before timing, clipcore's weights are copied into
it and both losses are checked equal, so the two rows time the same function. The steps of the two
libraries are interleaved (alternating which goes first) so that drift on a shared machine hits both;
samples/s is ``batch / median step time`` after the warm-up steps (which also absorb torch.compile);
the ratio is the median over steps of the two libraries' back-to-back step-time ratios. Other processes on
the machine make absolute numbers noise (a warning is printed when the load average shows them).

    export HF_HUB_OFFLINE=1
    python benchmarks/train_throughput.py --models tiny-vit,small --batch-size 64,16 --compile   # 2-core CPU
    python benchmarks/train_throughput.py --device cuda --models tiny-vit,small,base \
        --batch-size 1024,512,256 --precision bf16 --compile --json gpu.json                    # one GPU

The ``tiny`` preset has a conv image tower with no open_clip twin: compare the ViT presets.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

import open_clip
import torch
from torch import Tensor, nn

from clipcore.losses import contrastive_loss
from clipcore.models import CLIP, CLIPConfig, build_model, get_config, num_params
from clipcore.training import ADAMW, param_groups

# AdamW as clipcore.training builds it (open_clip's defaults for ViT-B/32 training); lr does not affect speed.
OPT = dict(lr=5e-4, **ADAMW)
WD = 0.1
DEFAULT_BATCH = {"cpu": {"tiny-vit": 64, "small": 16, "base": 8}, "cuda": {"tiny-vit": 1024, "small": 512, "base": 256}}


# ----------------------------------------------------------------------------- the twin model
def twin_problem(cfg: CLIPConfig) -> str | None:
    """Why a config has no open_clip twin, or None when it has one."""
    v, t = cfg.vision, cfg.text
    if v.kind != "vit" or t.kind != "transformer" or v.pool != "cls" or v.in_channels != 3:
        return (f"only ViT presets with 3-channel images, cls pooling and a transformer text tower have an open_clip "
                f"twin; got vision.kind={v.kind!r}, pool={v.pool!r}, in_channels={v.in_channels}, text.kind={t.kind!r}")
    return None


def open_clip_twin(cfg: CLIPConfig) -> nn.Module:
    """``open_clip.CLIP`` with the sizes of a clipcore ViT/transformer config."""
    v, t = cfg.vision, cfg.text
    if problem := twin_problem(cfg):
        raise ValueError(problem)
    return open_clip.CLIP(
        cfg.embed_dim,
        vision_cfg=dict(image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers,
                        head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio),
        text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                      layers=t.layers, mlp_ratio=t.mlp_ratio),
        init_logit_scale=math.log(cfg.init_logit_scale),
    )


def _block_map(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.ln_1": f"{dst}.ln_1", f"{src}.ln_2": f"{dst}.ln_2", f"{src}.qkv.weight": f"{dst}.attn.in_proj_weight",
            f"{src}.qkv.bias": f"{dst}.attn.in_proj_bias", f"{src}.out": f"{dst}.attn.out_proj",
            f"{src}.mlp.0": f"{dst}.mlp.c_fc", f"{src}.mlp.2": f"{dst}.mlp.c_proj"}


def copy_weights(model: CLIP, twin: nn.Module) -> None:
    """Load clipcore's parameters into the open_clip twin (same layout: q, k, v stacked, heads contiguous)."""
    rename = {"visual.patch": "visual.conv1", "visual.cls": "visual.class_embedding", "visual.pos": "visual.positional_embedding",
              "text.token": "token_embedding", "text.pos": "positional_embedding", "text.ln_final": "ln_final",
              "text.proj": "text_projection"}
    for i in range(model.cfg.vision.layers):
        rename |= _block_map(f"visual.blocks.{i}", f"visual.transformer.resblocks.{i}")
    for i in range(model.cfg.text.layers):
        rename |= _block_map(f"text.blocks.{i}", f"transformer.resblocks.{i}")
    state = {}
    for name, p in model.state_dict().items():
        for src in sorted(rename, key=len, reverse=True):
            if name == src or name.startswith(src + "."):
                name = rename[src] + name[len(src):]
                break
        state[name] = p
    missing, unexpected = twin.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "attn_mask"]
    if missing or unexpected:
        raise RuntimeError(f"weight copy clipcore -> open_clip failed: missing {missing}, unexpected {unexpected}")


# ----------------------------------------------------------------------------- inputs and steps
def random_batch(cfg: CLIPConfig, batch: int, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) ~ N(0, 1) and tokens (B, L): [SOT, random ids, EOT, 0 padding], random lengths.
    EOT = vocab - 1 is both the last non-pad token (clipcore's pooling) and the argmax (open_clip's)."""
    v, t = cfg.vision, cfg.text
    images = torch.randn(batch, 3, v.image_size, v.image_size, generator=gen)
    L, vocab = t.context_length, t.vocab_size
    tokens = torch.randint(1, vocab - 2, (batch, L), generator=gen)
    lengths = torch.randint(2, L + 1, (batch,), generator=gen)
    pos = torch.arange(L)[None]
    tokens[:, 0] = vocab - 2
    tokens = torch.where(pos == (lengths - 1)[:, None], vocab - 1, tokens)
    tokens = torch.where(pos >= lengths[:, None], 0, tokens)
    return images.to(device), tokens.to(device)


def make_step(lib: str, model: nn.Module, compile: bool, amp_dtype: torch.dtype | None, device: torch.device):
    """A closure running one train step of ``model`` on (images, tokens); returns the loss tensor."""
    opt = torch.optim.AdamW(param_groups(model, WD), **OPT)
    fwd = torch.compile(model) if compile else model
    clip_loss = open_clip.ClipLoss()

    def step(images: Tensor, tokens: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            img, txt, scale = fwd(images, tokens)
            if lib == "clipcore":
                loss = contrastive_loss(img.float(), txt.float(), scale)
            else:
                loss = clip_loss(img.float(), txt.float(), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if lib == "open_clip":  # open_clip's training loop clamps the temperature after the step
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
        return loss

    return step


def check_equal(model: CLIP, twin: nn.Module, images: Tensor, tokens: Tensor) -> float:
    """Both models, same weights, same batch: the losses must agree (fp32, eager). Returns |difference|."""
    with torch.no_grad():
        a = contrastive_loss(*model(images, tokens))
        b = open_clip.ClipLoss()(*twin(images, tokens))
    diff = (a - b).abs().item()
    if diff > 1e-4 * max(1.0, a.abs().item()):
        raise RuntimeError(f"clipcore and open_clip twin disagree: loss {a.item():.6f} vs {b.item():.6f}; "
                           "the sizes or weight mapping in benchmarks/train_throughput.py are wrong")
    return diff


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, batch: int, compile: bool, args, device: torch.device) -> dict:
    cfg = get_config(name)
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device).train()
    twin = open_clip_twin(cfg).to(device).train()
    copy_weights(model, twin)
    images, tokens = random_batch(cfg, batch, device, torch.Generator().manual_seed(args.seed))
    diff = check_equal(model, twin, images, tokens)
    amp = {"fp32": None, "bf16": torch.bfloat16}[args.precision]
    steps = {"clipcore": make_step("clipcore", model, compile, amp, device),
             "open_clip": make_step("open_clip", twin, compile, amp, device)}
    times: dict[str, list[float]] = {lib: [] for lib in steps}
    for i in range(args.warmup + args.steps):
        order = list(steps) if i % 2 == 0 else list(steps)[::-1]
        for lib in order:
            sync(device)
            t0 = time.perf_counter()
            loss = steps[lib](images, tokens)
            sync(device)
            times[lib].append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{lib} loss is {loss.item()} at step {i} ({name}, batch {batch})")
    row = {"model": name, "batch": batch, "mode": "compile" if compile else "eager", "precision": args.precision,
           "params_clipcore": num_params(model), "params_open_clip": num_params(twin), "init_loss_abs_diff": diff}
    for lib, ts in times.items():
        timed = ts[args.warmup:]
        med = statistics.median(timed)
        q = statistics.quantiles(timed, n=4) if len(timed) >= 2 else [med, med, med]
        row[lib] = {"samples_per_s": batch / med, "median_step_s": med, "p25_step_s": q[0], "p75_step_s": q[2],
                    "first_step_s": ts[0], "step_times_s": ts}
    # Ratio: median over the timed steps of t(open_clip) / t(clipcore) for the two steps run back to back,
    # which share the machine's state at that moment (robust to load from other processes).
    pairs = zip(times["open_clip"][args.warmup:], times["clipcore"][args.warmup:])
    row["ratio"] = statistics.median(o / c for o, c in pairs)
    row["ratio_of_medians"] = row["clipcore"]["samples_per_s"] / row["open_clip"]["samples_per_s"]
    return row


# ----------------------------------------------------------------------------- CLI
def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, torch threads={torch.get_num_threads()}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-vit,small", help="comma-separated ViT presets (tiny-vit, small, base)")
    p.add_argument("--batch-size", default="", help="one int, or one per model (comma-separated); default per preset and device")
    p.add_argument("--steps", type=int, default=20, help="timed steps per library (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (they absorb torch.compile)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="add torch.compile rows for both libraries")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast, as clipcore.train")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write every row (with all step times) to this file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible; use --device cpu")
    if args.steps < 1 or args.warmup < (1 if args.compile else 0):
        p.error("--steps must be >= 1 and --warmup >= 1 with --compile (the first step compiles)")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in args.models:
        try:
            problem = twin_problem(get_config(name))
        except ValueError as e:  # unknown preset
            problem = str(e)
        if problem:
            p.error(f"--models {name}: {problem}. Use ViT presets, e.g. --models tiny-vit,small,base")
    if args.batch_size:
        sizes = [int(b) for b in args.batch_size.split(",")]
        if len(sizes) == 1:
            sizes *= len(args.models)
        if len(sizes) != len(args.models):
            p.error(f"--batch-size has {len(sizes)} values for {len(args.models)} models; give one, or one per model")
    else:
        sizes = [DEFAULT_BATCH[args.device].get(m, 32) for m in args.models]
    args.batch_sizes = sizes
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    rows = []
    for name, batch in zip(args.models, args.batch_sizes):
        for compile in (False, True) if args.compile else (False,):
            rows.append(bench(name, batch, compile, args, device))
            r = rows[-1]
            print(f"  {name} {r['mode']}: clipcore {r['clipcore']['samples_per_s']:.1f}/s, "
                  f"open_clip {r['open_clip']['samples_per_s']:.1f}/s (first step {r['clipcore']['first_step_s']:.1f} s / "
                  f"{r['open_clip']['first_step_s']:.1f} s)", file=sys.stderr)
    load.append(os.getloadavg()[0])
    if load[0] > 1 or load[1] > torch.get_num_threads() + 1:  # 1-minute averages; this run adds ~threads
        print(f"\nwarning: load average {load[0]:.1f} / {load[1]:.1f} (start / end) on {os.cpu_count()} cpus: other "
              "processes share this machine; absolute samples/s are noise, the paired ratio less so", file=sys.stderr)
    print(f"\ntrain step throughput on {machine(device)}, torch {torch.__version__}, open_clip {open_clip.__version__}, "
          f"{args.precision}, median of {args.steps} steps after {args.warmup} warm-up, load average {load[0]:.1f} -> {load[1]:.1f}\n")
    print("| model | params (clipcore / open_clip) | batch | mode | clipcore samples/s | open_clip samples/s | clipcore / open_clip |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_clipcore'] / 1e6:.2f}M / {r['params_open_clip'] / 1e6:.2f}M | {r['batch']} | "
              f"{r['mode']} | {r['clipcore']['samples_per_s']:.1f} | {r['open_clip']['samples_per_s']:.1f} | {r['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": machine(device), "torch": torch.__version__, "open_clip": open_clip.__version__,
                       "loadavg_start_end": load, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
