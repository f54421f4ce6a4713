"""Plain CLIP pretraining (``--method clip``) as a :class:`~clipcore.methods.Task`: the model of ``--model`` (a
preset or ``open_clip:NAME``, or ``--init``), image-caption batches from a CSV, a folder or webdataset shards, and
the contrastive loss of ``--loss`` from :func:`clipcore.losses.make_loss` (which gathers under torchrun)."""
from __future__ import annotations

import dataclasses

import torch

from clipcore import checkpoint as ckpt_io
from clipcore import distributed
from clipcore.data import DataError, load_dataset, make_loader
from clipcore.evaluate import evaluate_model
from clipcore.images import PreprocessCfg
from clipcore.losses import make_loss
from clipcore.methods import HeldOut, Task, load_model
from clipcore.models import CLIP, get_config
from clipcore.training import TrainConfig


def model_for_run(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, object, dict]:
    """(model, tokenizer, checkpoint meta) from --init, or --model (a preset or open_clip:NAME) + --pretrained."""
    if cfg.init:
        model, tokenizer, ckpt = load_model(cfg.init, device)
        meta = {k: ckpt[k] for k in ("model_config", "open_clip_model") if k in ckpt}
        meta["preprocess"] = ckpt_io.preprocess_of(ckpt, model).to_dict()   # its images, read as in its training
    elif cfg.model.startswith("open_clip:"):
        from clipcore.adapters import OpenCLIP
        model = OpenCLIP(cfg.model.split(":", 1)[1]).to(device)
        tokenizer, meta = model.tokenizer, {"open_clip_model": model.name}
    else:
        model_cfg = get_config(cfg.model)
        model, tokenizer = CLIP(model_cfg).to(device), ckpt_io.tokenizer_for(model_cfg)
        meta = {"model_config": dataclasses.asdict(model_cfg)}
    if cfg.pretrained:
        from clipcore.adapters import load_pretrained
        load_pretrained(model, cfg.pretrained)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    meta["tokenizer"] = ckpt_io.tokenizer_record(model, tokenizer)
    return model, tokenizer, meta


def dataset_type(cfg: TrainConfig) -> str:
    if cfg.dataset_type != "auto":
        return cfg.dataset_type
    return "webdataset" if cfg.train_data and ".tar" in cfg.train_data else "files"


def csv_keys(cfg: TrainConfig) -> dict:
    """load_dataset keywords of open_clip's --csv-img-key / --csv-caption-key / --csv-separator ('\\t', 'tab' and
    'comma' are accepted spellings)."""
    sep = cfg.csv_separator and {"\\t": "\t", "tab": "\t", "comma": ","}.get(cfg.csv_separator, cfg.csv_separator)
    keys = (("image_key", cfg.csv_img_key), ("caption_key", cfg.csv_caption_key), ("sep", sep))
    return {k: v for k, v in keys if v}


def loss_for_run(cfg: TrainConfig):
    """The run's loss (:func:`clipcore.losses.make_loss`) from its TrainConfig: name, implementation, kernel and
    tiles, regulariser, and the torchrun options."""
    return make_loss(cfg.loss, impl=cfg.loss_impl, kernel=cfg.loss_kernel, tile=cfg.loss_tile,
                     col_tile=cfg.loss_col_tile, reg_lambda=cfg.reg_lambda, reg_pairs=cfg.reg_pairs,
                     local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad)


def clip_task(cfg: TrainConfig, device: torch.device) -> Task:
    """Plain CLIP training (``--method clip``): image-caption batches and the contrastive loss of ``--loss``."""
    model, tokenizer, meta = model_for_run(cfg, device)
    image_size, in_channels = model.input_size()
    world, rank = distributed.world_rank()
    data_kw = dict(image_size=image_size, in_channels=in_channels, seed=cfg.seed, skip_bad=cfg.skip_bad,
                   preprocess=PreprocessCfg.from_dict(meta["preprocess"]) if "preprocess" in meta else None)
    data_kw.update(csv_keys(cfg))
    if dataset_type(cfg) == "webdataset":
        from clipcore.shards import ShardSource
        train_src = ShardSource(cfg.train_data, image_size=image_size, in_channels=in_channels, seed=cfg.seed,
                                preprocess=data_kw["preprocess"])
        steps = train_src.steps_per_epoch(cfg.batch_size, world, cfg.workers)
        describe = f"{train_src.num_samples} train pairs in {len(train_src.shards)} webdataset shards"
        loader = lambda epoch, start: train_src.loader(tokenizer, cfg.batch_size, epoch=epoch, start_batch=start,  # noqa: E731
                                                       rank=rank, world_size=world, num_workers=cfg.workers)
        data_kw["preprocess"] = train_src.preprocess_cfg       # held-out data read as the training data
    else:
        if cfg.dataset_type not in ("auto", "csv", "folder"):
            raise DataError(f"--dataset-type {cfg.dataset_type!r}: use auto, csv, folder or webdataset")
        train_ds = load_dataset(cfg.train_data, "train", **data_kw)
        steps, describe = len(train_ds) // cfg.batch_size, f"{len(train_ds)} train pairs"
        data_kw["preprocess"] = train_ds.preprocess_cfg        # held-out data read as the training data
        loader = lambda epoch, start: make_loader(train_ds, tokenizer, cfg.batch_size, seed=cfg.seed, epoch=epoch,  # noqa: E731
                                                  start_batch=start, num_workers=cfg.workers, rank=rank, world_size=world)
    meta["preprocess"] = data_kw["preprocess"].to_dict()       # the checkpoint carries it (clipcore.images)
    held = HeldOut(cfg, data_kw)
    loss_fn = loss_for_run(cfg)
    fwd = torch.compile(model) if cfg.compile else model

    def embed(batch):
        images, tokens, labels = (t.to(device) for t in batch)
        img, txt, scale = fwd(images, tokens)
        return img.float(), txt.float(), scale, labels

    def loss_from_embeddings(img, txt, scale, labels):
        return loss_fn(img, txt, scale, labels=labels), {"logit_scale": scale.item()}

    def evaluate(split: str) -> dict:
        return evaluate_model(model, tokenizer, held.dataset(split), device=device, retrieval=split == "test")

    return Task(
        model=model, steps_per_epoch=steps, loader=loader,
        step=lambda batch: loss_from_embeddings(*embed(batch)), embed=embed, loss_from_embeddings=loss_from_embeddings,
        evaluate=evaluate if held else None, eval_splits=held.eval_splits(), meta=meta, describe=describe,
        held_out=held.describe,
    )
