"""Faults in user data that used to pass silently or fail late: image modes, CSV quoting, rows that point at
directories, images that are broken before training starts, and the messages' flag names."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.data import DataError, load_dataset
from clipcore.images import ALPHA_BACKGROUND, preprocess, to_canonical

ZERO, ONE = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
ATOL = 1.5 / 255          # PIL's 8-bit colour conversions round to the nearest level (YCbCr, CMYK, composites)
WHITE = ALPHA_BACKGROUND / 255


def raw(im: Image.Image, channels: int = 3) -> torch.Tensor:
    """preprocess without resizing (the 4x4 image is already 4 px) or normalising -> (C, 4, 4) in [0, 1]."""
    return preprocess(im, 4, ZERO[:channels], ONE[:channels])


LEVELS = np.array([[0, 1, 2, 3]] * 4)      # a horizontal ramp, 4x4: column j has level j of 4


def rgb_expected(r, g, b) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32).view(3, 1, 1).expand(3, 4, 4)


def ramp(scale: float) -> torch.Tensor:
    """(4, 4) ramp LEVELS / 3 * scale."""
    return torch.from_numpy(LEVELS / 3 * scale).float()


# --------------------------------------------------------------------------------------------- image modes
def test_eight_bit_modes_keep_their_values():
    u8 = (LEVELS * 85).astype(np.uint8)                       # 0, 85, 170, 255
    grey = torch.from_numpy(u8 / 255.0).float()
    assert torch.allclose(raw(Image.fromarray(u8, "L")), grey.expand(3, 4, 4), atol=1e-6)
    assert torch.allclose(raw(Image.fromarray(u8, "L"), 1)[0], grey, atol=1e-6)
    bw = Image.fromarray(LEVELS >= 2)                           # mode "1"
    assert bw.mode == "1" and torch.equal(raw(bw, 1)[0], torch.from_numpy(LEVELS >= 2).float())
    rgb = np.stack([u8, 255 - u8, np.full_like(u8, 30)], -1)
    x = raw(Image.fromarray(rgb, "RGB"))
    assert torch.allclose(x, torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1), atol=1e-6)
    pal = Image.fromarray(LEVELS.astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    x = raw(pal)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(x[:, 2, 3], torch.tensor([10, 20, 30]) / 255.0)
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))            # pure cyan ink
    assert torch.allclose(raw(cmyk), rgb_expected(0, 1, 1), atol=ATOL)
    ycc = Image.new("YCbCr", (4, 4), (128, 128, 128))           # mid grey
    assert torch.allclose(raw(ycc), rgb_expected(*[128 / 255] * 3), atol=ATOL)


def test_alpha_is_composited_onto_white():
    u8 = (LEVELS * 85).astype(np.uint8)
    alpha = np.array([[0, 128, 255, 255]] * 4, np.uint8)       # transparent, half, opaque, opaque
    want = torch.from_numpy(alpha / 255 * (u8 / 255) + (1 - alpha / 255) * WHITE).float()
    la = Image.fromarray(np.stack([u8, alpha], -1), "LA")
    assert torch.allclose(raw(la, 1)[0], want, atol=ATOL)
    assert torch.allclose(raw(la), want.expand(3, 4, 4), atol=ATOL)
    rgba = Image.fromarray(np.stack([u8, u8, u8, alpha], -1), "RGBA")
    assert torch.allclose(raw(rgba), want.expand(3, 4, 4), atol=ATOL)
    assert raw(rgba)[:, 0, 0].tolist() == [WHITE] * 3          # fully transparent black -> background
    premultiplied = 10 / 255 + (1 - 128 / 255) * WHITE         # colour 10 already times alpha 128 / 255
    for mode, colour in (("La", (10, 128)), ("RGBa", (10, 10, 10, 128))):
        assert torch.allclose(raw(Image.new(mode, (4, 4), colour)), torch.full((3, 4, 4), premultiplied), atol=ATOL)
    assert torch.equal(raw(Image.new("PA", (4, 4), (0, 0)), 1), torch.full((1, 4, 4), WHITE))
    pal = Image.fromarray(LEVELS.astype(np.uint8), "P")
    pal.putpalette([0, 0, 0] * 4)                                # every index black ...
    pal.info["transparency"] = 0                                 # ... but index 0 is transparent
    x = raw(pal)
    assert torch.allclose(x[:, :, 0], torch.full((3, 4), WHITE)) and x[:, :, 1:].abs().max() == 0


def test_sixteen_bit_and_float_modes_use_their_real_range():
    u16 = (LEVELS * 7000).astype(np.uint16)                     # 0 .. 21000: a dark 16-bit image
    want = ramp(21000 / 65535)
    im16 = Image.fromarray(u16)
    assert im16.mode == "I;16"
    assert torch.allclose(raw(im16, 1)[0], want, atol=1e-6)
    assert torch.allclose(raw(im16), want.expand(3, 4, 4), atol=1e-6)
    big = Image.frombytes("I;16B", (4, 4), u16.astype(">u2").tobytes())
    assert torch.allclose(raw(big, 1)[0], want, atol=1e-6)
    as_i = Image.fromarray(u16.astype(np.int32))                 # "I" holding 16-bit data: / 65535
    assert as_i.mode == "I" and torch.allclose(raw(as_i, 1)[0], want, atol=1e-6)
    signed = Image.fromarray((LEVELS * 100_000 - 50_000).astype(np.int32))   # outside [0, 65535]: min-max
    assert torch.allclose(raw(signed, 1)[0], ramp(1.0), atol=1e-6)
    f01 = Image.fromarray((LEVELS / 3 * 0.25).astype(np.float32))             # already in [0, 1]: kept
    assert f01.mode == "F" and torch.allclose(raw(f01, 1)[0], ramp(0.25), atol=1e-6)
    hdr = Image.fromarray((LEVELS * 1000.0 - 5).astype(np.float32))          # outside [0, 1]: min-max
    assert torch.allclose(raw(hdr, 1)[0], ramp(1.0), atol=1e-6)
    flat = Image.fromarray(np.full((4, 4), 7.0, np.float32))
    assert raw(flat, 1).abs().max() == 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_canonical(Image.fromarray(np.full((4, 4), np.nan, np.float32)), 1)


def test_sixteen_bit_png_and_float_tiff_through_a_csv(tmp_path):
    dark = (np.arange(64 * 64).reshape(64, 64) % 4000).astype(np.uint16)   # 16-bit, all below 4000/65535
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    Image.fromarray(np.full((64, 64), 0.75, np.float32)).save(tmp_path / "float.tif")
    (tmp_path / "d.csv").write_text("filepath,caption\ndark16.png,a dark frame\nfloat.tif,a float frame\n")
    ds = load_dataset(str(tmp_path / "d.csv"), image_size=16, in_channels=1)
    x = ds.batch_images([0, 1]) * 0.5 + 0.5                              # undo the 0.5/0.5 normalisation
    assert Image.open(tmp_path / "dark16.png").mode == "I;16"
    assert abs(x[0].mean().item() - dark.mean() / 65535) < 0.01 and x[0].max() < 0.07   # was 99 % white
    assert torch.allclose(x[1], torch.full_like(x[1], 0.75), atol=1e-5)                  # was all black


# --------------------------------------------------------------------------------------------- CSV quoting
def _csv_rows(tmp_path, n=40):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    return ["filepath,caption"] + [f"x.png,caption number {i}" for i in range(1, n + 1)]


def test_unclosed_quote_names_the_row_instead_of_swallowing_the_file(tmp_path):
    rows = _csv_rows(tmp_path)
    rows[30] = 'x.png,"caption with an open quote'
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"d\.csv data row 30 \(line 31\): a quoted field opens on this row and "
                                        r"never closes.*\(to line 41\).*double|two"):
        load_dataset(str(tmp_path / "d.csv"))


def test_quote_closed_later_names_the_row_where_it_opens(tmp_path):
    rows = _csv_rows(tmp_path)
    rows[5] = 'x.png,"caption with an open quote'
    rows[8] = 'x.png,"a quoted, fine caption"'
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"d\.csv data row 5 \(line 6\): malformed quoting at line 9"):
        load_dataset(str(tmp_path / "d.csv"))


def test_field_count_must_match_the_header(tmp_path):
    rows = _csv_rows(tmp_path, 3)
    rows[2] = "x.png,a caption, with an unquoted comma"
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"data row 2 \(line 3\): 3 fields, the header has 2.*quote a field"):
        load_dataset(str(tmp_path / "d.csv"))
    rows = _csv_rows(tmp_path, 3)
    rows[3] = "x.png"
    (tmp_path / "e.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"data row 3 \(line 4\): 1 fields, the header has 2.*add the missing"):
        load_dataset(str(tmp_path / "e.csv"))
    rows[3] = "x.png,a caption,"
    (tmp_path / "f.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"data row 3 \(line 4\): 3 fields.*remove the trailing ','"):
        load_dataset(str(tmp_path / "f.csv"), skip_bad=True)              # the file's structure: not skippable


def test_quoted_multiline_caption_and_blank_lines_still_work(tmp_path):
    rows = _csv_rows(tmp_path, 3)
    rows[2] = 'x.png,"two\nlines, ""quoted"""'
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n\n")
    ds = load_dataset(str(tmp_path / "d.csv"))
    assert ds.captions == ["caption number 1", 'two\nlines, "quoted"', "caption number 3"]
    assert ds.rows[2].endswith("data row 3 (line 5)")


# --------------------------------------------------------------------------------------------- rows and images
def test_row_pointing_at_a_directory_or_empty_path(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\nsub,a folder\n")
    with pytest.raises(DataError, match=r"data row 2 \(line 3\): .*sub is a directory, not an image"):
        load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "e.csv").write_text("filepath,caption\nx.png,ok\n ,no path\n")
    with pytest.raises(DataError, match=r"data row 2 \(line 3\): empty image path"):
        load_dataset(str(tmp_path / "e.csv"))


def test_bad_images_found_when_built_and_skipped_with_skip_bad(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])          # a cut-off download: header intact
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "d.csv").write_text("filepath,caption\nok.jpg,fine\ncut.jpg,cut\nempty.png,empty\nok.jpg,again\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\): .*cut\.jpg is not a readable image.*truncated.*--skip-bad"):
        load_dataset(str(tmp_path / "d.csv"))
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 bad rows"):
        ds = load_dataset(str(tmp_path / "d.csv"), skip_bad=True)
    assert ds.captions == ["fine", "again"] and len(ds.skipped) == 2 and "empty.png" in ds.skipped[1]
    assert ds.batch_images([0, 1]).shape == (2, 3, 32, 32)
    with open(tmp_path / "ok.jpg", "ab") as f:                          # data after the end marker: still fine
        f.write(b"\0" * 5000)
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 bad rows"):
        assert len(load_dataset(str(tmp_path / "d.csv"), skip_bad=True)) == 2


def test_messages_name_the_command_line_flag(tmp_path):
    (tmp_path / "f" / "dog").mkdir(parents=True)
    (tmp_path / "f" / "dog" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "f"))
    assert "--skip-bad" in str(e.value) and "skip_bad" not in str(e.value)
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "f"), skip_bad=True)
    assert "--skip-bad cannot help" in str(e.value) and "skip_bad" not in str(e.value)
