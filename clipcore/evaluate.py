"""Evaluation of CLIP-type encoders: zero-shot classification, image-text retrieval, linear probe.

Functions take encoders and tensors, never a trainer. `model` is anything with
`encode_image(images, normalize=True) -> (N, D)` and `encode_text(tokens, normalize=True) -> (N, D)`.
Metric definitions follow LAION's CLIP_benchmark so numbers are comparable:
  acc@k            fraction of images whose label is among the k highest logits; reported only for k < #classes
                   (with k >= #classes it is 1 by construction; CLIP_benchmark's NaN is not valid JSON)
  mean_per_class_recall  mean over classes present in `labels` of recall (= sklearn balanced_accuracy_score)
  image_retrieval_recall@k  text -> image: fraction of texts whose own image is in the top k images
  text_retrieval_recall@k   image -> text: fraction of images with ANY of their captions in the top k texts

    feats = encode_images(model, images)                                     # (N, D)
    clf = zero_shot_classifier(model, tok, classnames, ["a photo of a {c}."])  # (C, D)
    zero_shot_metrics(feats, labels, clf)              # {"acc1": .., "acc5": .., "mean_per_class_recall": ..}
    evaluate_model(model, tok, dataset)                # everything, as one flat dict
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.encoder import Encoder

Template = str | Callable[[str], str]


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Put an nn.Module in eval mode for the block and restore its previous mode afterwards."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        yield
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def _batches(images_or_loader: Tensor | Iterable, batch_size: int) -> Iterator[Tensor]:
    if isinstance(images_or_loader, Tensor):
        yield from images_or_loader.split(batch_size)
        return
    for batch in images_or_loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


# ----------------------------------------------------------------------------------------- encoding
@torch.no_grad()
def encode(model: Encoder, which: str, batches: Iterable[Tensor], *, device: str | torch.device = "cpu") -> Tensor:
    """The one batched encoder of clipcore: ``model.encode_image`` (which="image") or ``encode_text`` ("text") of
    each batch, in eval mode (the previous mode restored) and without gradient -> (N, D) float32 L2-normalised
    features on the CPU. Any encoder (clipcore's CLIP, the open_clip adapter, the method wrappers) takes it."""
    fn = {"image": "encode_image", "text": "encode_text"}[which]
    with _eval_mode(model):
        out = [F.normalize(getattr(model, fn)(x.to(device), normalize=True).float(), dim=-1).cpu() for x in batches]
    if not out:
        raise ValueError(f"encode got no {which}s (empty tensor or loader)")
    return torch.cat(out)


def encode_images(model: Encoder, images_or_loader: Tensor | Iterable, *, batch_size: int = 512,
                  device: str | torch.device = "cpu") -> Tensor:
    """Images (N, C, H, W) tensor, or an iterable of batches (a tensor or a tuple whose first element is the
    images) -> (N, D) float32 L2-normalised features on the CPU."""
    return encode(model, "image", _batches(images_or_loader, batch_size), device=device)


def encode_texts(model: Encoder, tokenizer, texts: Sequence[str], *, batch_size: int = 512,
                 device: str | torch.device = "cpu") -> Tensor:
    """Strings -> tokenizer -> (N, D) float32 L2-normalised text features on the CPU."""
    texts = list(texts)
    return encode(model, "text", (tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)),
                  device=device)


def _fill(template: Template, classname: str) -> str:
    """"a photo of a {c}." and open_clip's "a photo of a {}." both work; callables are called."""
    return template(classname) if callable(template) else template.format(classname, c=classname)


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[Template],
                         device: str | torch.device = "cpu", batch_size: int = 512) -> Tensor:
    """(C, D) class embeddings, CLIP's prompt ensemble: for each class encode every template filled with the
    class name, L2-normalise each, average, re-normalise. ``clipcore.build_zero_shot_classifier`` returns the
    (D, C) transpose, as open_clip's does."""
    if not classnames or not templates:
        raise ValueError(f"need at least one class name and one template, got {len(classnames)} and {len(templates)}")
    prompts = [_fill(t, c) for c in classnames for t in templates]        # class-major
    emb = encode_texts(model, tokenizer, prompts, batch_size=batch_size, device=device)
    emb = emb.view(len(classnames), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


# ------------------------------------------------------------------------------------------- metrics
def classification_metrics(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """logits (N, C), labels (N,) in [0, C) -> {"acc{k}" for k in ks with k = 1 or k < C, "mean_per_class_recall"}.

    acc@k for k >= C (1 by construction) is left out, never NaN. mean_per_class_recall averages the
    recall (confusion-matrix diagonal / row sum) over the classes that occur in `labels`."""
    n, c = logits.shape
    labels = labels.long().to(logits.device)
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
    if n == 0:
        raise ValueError("no examples to evaluate")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}) (one per class of the classifier); "
                         f"got min {labels.min().item()}, max {labels.max().item()}")
    out: dict[str, float] = {}
    kmax = min(max(ks), c)
    top = logits.topk(kmax, dim=1).indices                                    # (N, kmax)
    hit = top == labels[:, None]
    for k in ks:
        if k == 1 or k < c:
            out[f"acc{k}"] = hit[:, :k].any(1).double().mean().item()
    conf = torch.bincount(labels * c + top[:, 0], minlength=c * c).view(c, c)  # rows: true, cols: predicted
    support = conf.sum(1)
    recall = conf.diag()[support > 0].double() / support[support > 0]
    out["mean_per_class_recall"] = recall.mean().item()
    return out


def zero_shot_metrics(image_features: Tensor, labels: Tensor, classifier: Tensor,
                      ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """image_features (N, D), labels (N,), classifier (C, D) -> {"acc1", "acc5", "mean_per_class_recall"}."""
    if classifier.dim() != 2 or classifier.shape[1] != image_features.shape[1]:
        raise ValueError(f"classifier must be (C, D={image_features.shape[1]}), got {tuple(classifier.shape)}; "
                         "open_clip's build_zero_shot_classifier returns (D, C): pass its transpose")
    return classification_metrics(image_features.float() @ classifier.float().T, labels, ks)


@torch.no_grad()
def retrieval_metrics(image_features: Tensor, text_features: Tensor, text_to_image: Tensor,
                      ks: Sequence[int] = (1, 5, 10), chunk: int = 4096) -> dict[str, float]:
    """image_features (Ni, D), text_features (Nt, D), text_to_image (Nt,) index of each text's image ->
    {"image_retrieval_recall@k" (text->image), "text_retrieval_recall@k" (image->text)} for k in ks.

    A query is a hit when ANY of its true positives is among its top k (CLIP-paper recall@k). Images with no
    caption are left out of text retrieval; k larger than the candidate set counts as the whole set."""
    ni, nt = len(image_features), len(text_features)
    t2i = text_to_image.long().cpu()
    if t2i.shape != (nt,):
        raise ValueError(f"text_to_image must be ({nt},), one image index per text; got {tuple(t2i.shape)}")
    if nt == 0 or ni == 0 or t2i.min() < 0 or t2i.max() >= ni:
        raise ValueError(f"text_to_image must map {nt} texts into [0, {ni}) images")
    img, txt = image_features.float().cpu(), text_features.float().cpu()
    hits_i = {k: torch.zeros(nt, dtype=torch.bool) for k in ks}                 # per text
    for s in range(0, nt, chunk):
        top = (txt[s:s + chunk] @ img.T).topk(min(max(ks), ni), dim=1).indices  # (chunk, k)
        match = top == t2i[s:s + chunk, None]
        for k in ks:
            hits_i[k][s:s + chunk] = match[:, :k].any(1)
    has_text = torch.zeros(ni, dtype=torch.bool)
    has_text[t2i] = True
    hits_t = {k: torch.zeros(ni, dtype=torch.bool) for k in ks}                 # per image
    for s in range(0, ni, chunk):
        top = (img[s:s + chunk] @ txt.T).topk(min(max(ks), nt), dim=1).indices  # (chunk, k) text ids
        match = t2i[top] == torch.arange(s, min(s + chunk, ni))[:, None]
        for k in ks:
            hits_t[k][s:s + chunk] = match[:, :k].any(1)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = hits_i[k].double().mean().item()
        out[f"text_retrieval_recall@{k}"] = hits_t[k][has_text].double().mean().item()
    return out


# --------------------------------------------------------------------------------------- linear probe
def _fit_logreg(x: Tensor, y: Tensor, num_classes: int, wd: float, epochs: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full-batch L-BFGS from zeros (convex: deterministic).
    Minimises mean cross-entropy + wd/2 * ||W||^2 (bias not penalised). x (N, D), y (N,) -> W (D, C), b (C,)."""
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * wd * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *,
                 val_x: Tensor | None = None, val_y: Tensor | None = None,
                 wds: Sequence[float] = (1e-6, 1e-4, 1e-2, 1.0), epochs: int = 200, seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """Logistic regression on frozen features (N, D) with int labels (N,).

    The weight decay is chosen by val acc1 (on val_x/val_y, or a seeded held-out 20% of train when none is
    given; ties -> the larger wd), then the probe is refit on train(+val) and scored on test.
    `epochs` = L-BFGS iterations (one full pass each). Returns {"acc1", "acc5" (only with more than 5 classes),
    "mean_per_class_recall", "wd"}."""
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y), ("val", val_x, val_y)):
        if (x is None) != (y is None):
            raise ValueError(f"give both {name}_x and {name}_y, or neither")
        if x is not None and (x.dim() != 2 or y.shape != (len(x),)):
            raise ValueError(f"{name}_x must be (N, D) and {name}_y (N,); got {tuple(x.shape)}, {tuple(y.shape)}")
    if not wds:
        raise ValueError("wds must hold at least one weight decay")
    prep = lambda t, dt: t.to(device=device, dtype=dt)  # noqa: E731
    tx, ty = prep(train_x, torch.float32), prep(train_y, torch.long)
    ex, ey = prep(test_x, torch.float32), prep(test_y, torch.long)
    ys = [ty, ey] + ([prep(val_y, torch.long)] if val_y is not None else [])
    num_classes = int(max(y.max().item() for y in ys)) + 1
    if val_x is not None:
        fit_x, fit_y, vx, vy = tx, ty, prep(val_x, torch.float32), prep(val_y, torch.long)
        all_x, all_y = torch.cat([tx, vx]), torch.cat([ty, vy])
    else:
        if len(tx) < 2:
            raise ValueError("need at least 2 training examples to hold out a validation split")
        perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(seed)).to(device)
        n_val = max(1, len(tx) // 5)
        vx, vy, fit_x, fit_y = tx[perm[:n_val]], ty[perm[:n_val]], tx[perm[n_val:]], ty[perm[n_val:]]
        all_x, all_y = tx, ty
    best_wd, best_acc = None, -1.0
    for wd in sorted(wds):
        w, b = _fit_logreg(fit_x, fit_y, num_classes, wd, epochs)
        acc = ((vx @ w + b).argmax(1) == vy).double().mean().item()
        if acc >= best_acc:
            best_wd, best_acc = wd, acc
    w, b = _fit_logreg(all_x, all_y, num_classes, best_wd, epochs)
    out = classification_metrics((ex @ w + b).cpu(), ey.cpu(), ks=(1, 5))
    out["wd"] = float(best_wd)
    return out


# ------------------------------------------------------------------------------------------ datasets
def _collate(batch: list[tuple]) -> tuple[Tensor, list[str], Tensor | None]:
    """(image, caption[, label]) items -> images (B, C, H, W), captions list, labels (B,) or None."""
    images = torch.stack([item[0] for item in batch])
    captions = [item[1] for item in batch]
    labels = torch.tensor([int(item[2]) for item in batch]) if len(batch[0]) > 2 else None
    return images, captions, labels


def _default_templates() -> list[Template]:
    """clipcore.data's zero-shot prompt ensemble, filled with its a/an rule ("an elephant")."""
    from clipcore.data import ZS_TEMPLATES, caption_for
    return [lambda c, t=t: caption_for(t, c) for t in ZS_TEMPLATES]


@torch.no_grad()
def evaluate_model(model, tokenizer, dataset, *, classnames: Sequence[str] | None = None,
                   templates: Sequence[Template] | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 512, retrieval: bool = True) -> dict[str, float]:
    """Encode a dataset of (image, caption[, label]) items and return one flat dict of metrics.

    Zero-shot ("acc1", "acc5", "mean_per_class_recall") runs when class names (argument or
    `dataset.classnames`) and labels >= 0 exist; items with label -1 (unknown) are left out of it.
    Templates default to clipcore.data.ZS_TEMPLATES (filled by its a/an-aware caption_for). Retrieval ("image_retrieval_recall@{1,5,10}",
    "text_retrieval_recall@{1,5,10}") uses each item's caption as the one positive of its own image: identical
    caption strings on different images are NOT merged, so datasets with template captions score low on
    text->image recall by construction (ties between identical texts)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    feats, texts, labels = [], [], []
    with _eval_mode(model):
        for images, captions, labs in loader:
            feats.append(encode_images(model, images, batch_size=batch_size, device=device))
            if retrieval:
                texts.append(encode_texts(model, tokenizer, captions, batch_size=batch_size, device=device))
            if labs is not None:
                labels.append(labs)
    if not feats:
        raise ValueError("evaluate_model got an empty dataset")
    image_features = torch.cat(feats)
    out: dict[str, float] = {}
    classnames = classnames if classnames is not None else getattr(dataset, "classnames", None)
    if classnames and labels:
        y = torch.cat(labels)
        keep = y >= 0
        if keep.any():
            clf = zero_shot_classifier(model, tokenizer, classnames, templates or _default_templates(),
                                       device=device, batch_size=batch_size)
            out.update(zero_shot_metrics(image_features[keep], y[keep], clf))
    if retrieval:
        out.update(retrieval_metrics(image_features, torch.cat(texts), torch.arange(len(image_features))))
    return out
