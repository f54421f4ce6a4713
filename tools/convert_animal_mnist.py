"""Convert the animal-mnist 0.4 pickles into clipcore/assets/animal_mnist.npz (run once, offline).

    pip download animal-mnist==0.4 --no-deps -d /tmp/amnist
    python tools/convert_animal_mnist.py /tmp/amnist/animal_mnist-0.4-py3-none-any.whl

The argument is the wheel, or a folder holding animal_data_version_3.gz and animal_label_version_3.gz.
The pickles hold two plain numpy arrays (uint8 (10000, 28, 28) and int64 (10000,)); they are read with a
restricted unpickler that only allows numpy's array reconstruction, so nothing else can run.
Label order follows the package's description (Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep,
Zebra), checked by eye against image grids (see --grid). Silhouettes are white animals on a black
background (MNIST convention), values 0..255.
"""
from __future__ import annotations

import argparse
import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

CLASSNAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
MEMBER = "animal_mnist/data/Animal_MNIST/"
OUT = Path(__file__).resolve().parents[1] / "clipcore" / "assets" / "animal_mnist.npz"


class _NumpyOnly(pickle.Unpickler):
    """Unpickler that accepts only what a pickled ndarray needs."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read(src: Path, name: str) -> np.ndarray:
    if src.suffix == ".whl":
        with zipfile.ZipFile(src) as z:
            raw = z.read(MEMBER + name)
    else:
        raw = (src / name).read_bytes()
    return np.asarray(_NumpyOnly(io.BytesIO(gzip.decompress(raw))).load())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="animal_mnist-0.4 wheel or folder with the two .gz pickles")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--grid", type=Path, default=None, help="also save a PNG grid (rows = classes) to check labels")
    a = ap.parse_args()
    images = _read(a.src, "animal_data_version_3.gz").astype(np.uint8)
    labels = _read(a.src, "animal_label_version_3.gz").astype(np.int64)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,), (images.shape, labels.shape)
    assert np.bincount(labels).tolist() == [1000] * 10, np.bincount(labels)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, images=images, labels=labels, classnames=np.array(CLASSNAMES))
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB): images {images.shape} {images.dtype}, "
          f"labels {labels.shape}, mean pixel {images.mean():.1f}, corner pixel mean {images[:, 0, 0].mean():.1f}")
    if a.grid is not None:
        from PIL import Image
        rows = [np.concatenate([images[np.flatnonzero(labels == k)[j]] for j in range(12)], 1) for k in range(10)]
        Image.fromarray(np.concatenate(rows, 0)).resize((12 * 28 * 3, 10 * 28 * 3), Image.NEAREST).save(a.grid)
        print(f"grid: rows are {', '.join(CLASSNAMES)} -> {a.grid}")


if __name__ == "__main__":
    main()
