"""ARF and the robust-finetuning baselines (clipcore.methods.arf): WiSE-FT endpoints, FLYP's positives, anchor
retrieval, which weights each mode trains, the caption/pool readers and the CLI path end to end."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipcore.memory import MemoryBank
from clipcore.methods import arf, load_model
from clipcore.models import CLIP, get_config
from clipcore.tokenizer import WordTokenizer
from clipcore.train import TrainConfig, train

CLASSES = ["zorbel", "mipsy", "quandle"]


def tiny_clip(seed: int = 0) -> tuple[CLIP, WordTokenizer]:
    torch.manual_seed(seed)
    cfg = get_config("tiny", tokenizer="word", vision__image_size=16, text__context_length=12, text__vocab_size=64)
    tok = WordTokenizer.from_texts(["a photo of a " + c for c in CLASSES] + ["red blue striped circle square thing with"],
                                   context_length=12)
    return CLIP(cfg), tok


def synthetic(n_per_class: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), 3, 16, 16, generator=g) + labels.view(-1, 1, 1, 1).float()
    caps = [[f"a {'red' if y == 0 else 'blue'} thing with circle", "a striped square"] for y in labels.tolist()]
    return arf.Pairs(images, caps, labels, CLASSES)


def test_wise_endpoints_are_exact():
    a, _ = tiny_clip(0)
    b, _ = tiny_clip(1)
    s0, s1 = a.state_dict(), b.state_dict()
    for alpha, ref in ((0.0, s0), (1.0, s1)):
        out = arf.wise(s0, s1, alpha)
        assert all(torch.equal(out[k], ref[k]) for k in ref)
    mid = arf.wise(s0, s1, 0.25)
    k = next(k for k, v in s0.items() if v.is_floating_point() and v.numel() > 1)
    assert torch.allclose(mid[k], 0.75 * s0[k] + 0.25 * s1[k])
    with pytest.raises(ValueError, match="same keys"):
        arf.wise(s0, {**s1, "extra": torch.zeros(1)}, 0.5)


def test_flyp_treats_same_class_pairs_as_positives():
    """multi: one prompt per class in the batch; a same-class image is a positive of its class prompt."""
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    prompts = F.normalize(torch.randn(2, 8, dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 1, 0, 0])
    s = 10.0
    logits = s * img @ prompts.T                                       # (4, 2)
    i2t = -logits.log_softmax(1)[torch.arange(4), y].mean()
    lt = logits.T.log_softmax(1)                                       # (2, 4) text -> image
    t2i = -(lt[0, [0, 2, 3]].mean() + lt[1, 1]) / 2
    assert torch.allclose(arf.flyp_loss(img, prompts, y, s), 0.5 * (i2t + t2i))
    # plain keeps the duplicated prompts as negatives: a different (larger) loss on the same batch
    assert arf.flyp_loss(img, prompts, y, s, pos="plain") > arf.flyp_loss(img, prompts, y, s)


def test_shared_negatives_loss_against_a_loop():
    """Option shared_negatives: every image's softmax runs over all texts of the step (prompts, captions, anchor
    texts) and every text's over all images; written out row by row here. Without extras it is flyp_loss."""
    torch.manual_seed(1)
    n = lambda *shape: F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)  # noqa: E731
    img, prompts, caps, a_img, a_txt = n(4, 8), n(2, 8), n(4, 8), n(3, 8), n(3, 8)
    y, s = torch.tensor([0, 1, 0, 0]), 7.0
    texts, images = torch.cat([prompts, caps, a_txt]), torch.cat([img, a_img])

    def ce(q, cands, pos):              # -log softmax over cands, averaged over the positive columns
        return -(s * cands @ q).log_softmax(0)[pos].mean()

    flyp_i2t = sum(ce(img[i], texts, [int(y[i])]) for i in range(4)) / 4
    flyp_t2i = sum(ce(prompts[c], images, [i for i in range(4) if y[i] == c]) for c in range(2)) / 2
    tca = (sum(ce(img[i], texts, [2 + i]) for i in range(4)) / 4 + sum(ce(caps[i], images, [i]) for i in range(4)) / 4) / 2
    ita = (sum(ce(a_img[j], texts, [6 + j]) for j in range(3)) / 3
           + sum(ce(a_txt[j], images, [4 + j]) for j in range(3)) / 3) / 2
    want = 0.5 * (flyp_i2t + flyp_t2i) + 0.5 * tca + 2.0 * ita
    got, parts = arf.shared_negatives_loss(img, prompts, y, s, caps, a_img, a_txt, lambda_tca=0.5, lambda_ita=2.0)
    torch.testing.assert_close(got, want)
    assert parts["tca"] == pytest.approx(tca.item()) and parts["ita"] == pytest.approx(ita.item())
    torch.testing.assert_close(arf.shared_negatives_loss(img, prompts, y, s)[0], arf.flyp_loss(img, prompts, y, s))
    # more candidates than the per-term losses see: never a smaller loss on the same embeddings
    per_term = (arf.flyp_loss(img, prompts, y, s) + 0.5 * arf.contrastive_loss(img, caps, s)
                + 2.0 * arf.contrastive_loss(a_img, a_txt, s))
    assert got > per_term


def test_select_anchors_picks_the_task_pairs():
    """Hand-made pool: rows 0-1 match class 0's query, rows 2-3 class 1's, rows 4-5 neither."""
    e = torch.eye(4)
    text = torch.stack([e[0], F.normalize(e[0] + 0.1 * e[2], dim=0), e[1], F.normalize(e[1] + 0.2 * e[3], dim=0),
                        e[2], e[3]])
    bank = MemoryBank(text.clone(), text)
    a = arf.select_anchors(bank, torch.stack([e[0], e[1]]), k=2, by="text")
    assert sorted(a["rows"].tolist()) == [0, 1, 2, 3]
    assert {r: c for r, c in zip(a["rows"].tolist(), a["cls"].tolist())} == {0: 0, 1: 0, 2: 1, 3: 1}
    # overlapping top-k: row 1 is in both lists, kept once with the class that scored it highest
    q = torch.stack([e[0], F.normalize(e[0] + e[2], dim=0)])
    b = arf.select_anchors(bank, q, k=2, by="text")
    assert len(b["rows"]) == len(set(b["rows"].tolist())) == 3
    r = arf.select_anchors(bank, q, k=2, by="text", random=True, seed=0)
    assert len(r["rows"]) == 3 and (r["cls"] == -1).all()


def test_several_query_templates_split_k_and_map_rows_to_classes():
    """query_template "a|b": each class keeps ceil(k / 2) rows per template; query rows map back to their class."""
    e = torch.eye(4)
    bank = MemoryBank(e.clone(), e.clone())
    q = torch.stack([e[0], e[1], e[2], e[3]])        # template 1 for classes 0, 1; template 2 for classes 0, 1
    a = arf.select_anchors(bank, q, k=1, by="text", query_class=torch.tensor([0, 1, 0, 1]))
    assert {r: c for r, c in zip(a["rows"].tolist(), a["cls"].tolist())} == {0: 0, 1: 1, 2: 0, 3: 1}
    model0, tok = tiny_clip()
    pool = arf.Pairs(torch.randn(12, 3, 16, 16), ["a red circle"] * 6 + ["a blue square"] * 6)
    one = arf.arf_task(model0, tok, synthetic(), arf.Config(mode="arf", k=4, query_template="a photo of a {}"),
                       batch_size=12, seed=0, device=torch.device("cpu"), pool=pool)
    two = arf.arf_task(model0, tok, synthetic(), arf.Config(mode="arf", k=4, query_template="a photo of a {}|{}"),
                       batch_size=12, seed=0, device=torch.device("cpu"), pool=pool)
    assert len(one.anchors["rows"]) <= 4 * len(CLASSES) and len(two.anchors["rows"]) <= 2 * 2 * len(CLASSES)
    assert set(two.anchors["cls"].tolist()) <= set(range(len(CLASSES)))
    with pytest.raises(ValueError, match="query-template.*'a photo'"):
        arf.Config(query_template="{}|a photo")


@pytest.mark.parametrize("mode", ["ft", "lpft", "flyp", "arf"])
def test_modes_train_the_right_weights(mode):
    model0, tok = tiny_clip()
    data = synthetic()
    pool = arf.Pairs(torch.randn(12, 3, 16, 16), ["a red circle"] * 6 + ["a blue square"] * 6)
    cfg = arf.Config(mode=mode, k=3)
    task = arf.arf_task(model0, tok, data, cfg, batch_size=12, seed=0, device=torch.device("cpu"), pool=pool)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    if mode == "lpft":   # the probe moved the head away from the zero-shot head, towers untouched
        assert not torch.allclose(task.model.head, task.prompts0)
    batch = next(iter(task.loader(0, 0)))
    loss, info = task.step(batch)
    assert torch.isfinite(loss)
    loss.backward()
    got = {n for n, p in task.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("clip.visual") for n in got)
    text_trains = any(n.startswith("clip.text") for n in got)
    assert text_trains == (mode in ("flyp", "arf"))
    assert ("head" in got) == (mode in ("ft", "lpft"))
    if mode == "arf":
        assert set(info) >= {"tca", "ita"} and len(task.anchors["rows"]) <= 3 * len(CLASSES)
    assert all(torch.equal(p, before[n]) for n, p in task.model.named_parameters())  # no step taken yet
    assert all(not p.requires_grad for p in task.theta0.parameters())


def test_wise_model_of_a_task_interpolates_from_theta0():
    model0, tok = tiny_clip()
    task = arf.arf_task(model0, tok, synthetic(), arf.Config(mode="ft"), batch_size=12, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        for p in task.model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    w0, w1 = arf.wise_model(task, 0.0), arf.wise_model(task, 1.0)
    assert torch.equal(w0.head, task.prompts0) and torch.equal(w1.head, task.model.head)
    assert all(torch.equal(a, b) for a, b in zip(w0.clip.parameters(), task.theta0.parameters()))


def test_missing_anchor_inputs_and_bad_files(tmp_path):
    model0, tok = tiny_clip()
    data = synthetic()
    with pytest.raises(ValueError, match="--arf-pool"):
        arf.arf_task(model0, tok, data, arf.Config(mode="arf"), batch_size=12, seed=0, device=torch.device("cpu"))
    no_caps = arf.Pairs(data.batch_images(range(len(data))), None, data.labels, CLASSES)
    with pytest.raises(ValueError, match="--arf-captions"):
        arf.arf_task(model0, tok, no_caps, arf.Config(mode="arf", lambda_ita=0), batch_size=12, seed=0,
                     device=torch.device("cpu"))
    f = tmp_path / "caps.jsonl"
    f.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        arf.read_captions(f, [tmp_path / "a.png"])
    f.write_text('{"image": "a.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match="b.png"):
        arf.read_captions(f, [tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        arf.read_captions(tmp_path / "nope.jsonl", [])


def test_cli_path_end_to_end(tmp_path):
    """theta0 from a short CLIP run on a class folder; ARF with captions + a JSON-lines pool through train()."""
    rng = np.random.default_rng(0)
    caps, pool = [], []
    for k, name in enumerate(CLASSES):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(8):
            arr = np.clip(rng.normal(60, 30, (20, 20, 3)), 0, 255)
            arr[..., k] += 150
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
            caps.append({"image": f"data/{name}/{i}.png", "caption": f"a {['red', 'green', 'blue'][k]} square"})
            pool.append({"image": f"data/{name}/{i}.png", "caption": f"a photo of a {name} on grass"})
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(c) for c in caps))
    (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(c) for c in pool))
    common = dict(train_data=str(tmp_path / "data"), val_data=str(tmp_path / "data"), logs=str(tmp_path / "logs"),
                  batch_size=8, epochs=1, warmup=1, log_every=1)
    train(TrainConfig(name="theta0", **common))
    theta0 = tmp_path / "logs" / "theta0" / "checkpoints" / "latest.pt"
    res = train(TrainConfig(name="arf", method="arf", init=str(theta0), **common,
                            options={"captions": str(tmp_path / "caps.jsonl"), "pool": str(tmp_path / "pool.jsonl"),
                                     "k": 4, "anchors_out": str(tmp_path / "anchors.jsonl")}))
    assert res["steps"] == 3 and all(math.isfinite(x) for x in res["losses"])
    assert 0 <= res["acc1"] <= 1 and set(res) >= {"wise0/acc1", "wise0.5/acc1"}
    anchors = [json.loads(line) for line in open(tmp_path / "anchors.jsonl")]
    assert 1 <= len(anchors) <= 12 and all(a["class"] in CLASSES for a in anchors)
    model, _, ck = load_model(tmp_path / "logs" / "arf" / "checkpoints" / "latest.pt")
    assert ck["method"] == "arf" and isinstance(model, CLIP)   # an ARF checkpoint loads as a plain CLIP
    # the reconstruction options of docs/methods.md, ARF §3.2/§3.4 through the same path: one candidate set, a
    # name-only query
    res2 = train(TrainConfig(name="arf-shared", method="arf", init=str(theta0), **common,
                             options={"captions": str(tmp_path / "caps.jsonl"), "pool": str(tmp_path / "pool.jsonl"),
                                      "k": 4, "shared_negatives": True, "query_template": "{}"}))
    assert all(math.isfinite(x) for x in res2["losses"]) and res2["losses"][0] > res["losses"][0]
