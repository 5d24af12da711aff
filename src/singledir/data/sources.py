"""The dataset registry: where each dataset's raw arrays come from (file lookup, reading, validation).

Offers:

- :data:`DATASETS` -- the dataset names, and :func:`resolve_name` (aliases, unknown-name error)
- :class:`RawData` -- a dataset's four raw arrays, class names, source, and the divisor that maps its
  pixel values to [0, 1]
- :func:`load_raw` -- ``load_raw(name, data_dir=None) -> RawData`` (no scaling, subsetting, or
  normalization: that is :func:`singledir.data.load_dataset`'s job)
- :func:`candidate_dirs` -- the directories searched for a file-based dataset
- :func:`generate_mnist1d` -- MNIST-1D generated offline (seeded; the global RNG state is restored)

Where each dataset comes from:

- ``fashion-mnist``: the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, by default
  from Debian's package dataset-fashion-mnist (:data:`FASHION_MNIST_DEBIAN_DIR`). A ``data_dir`` takes
  precedence: ``data_dir``, ``data_dir/fashion-mnist`` and ``data_dir/FashionMNIST/raw`` (torchvision's
  layout) are searched first, the Debian location last (so one ``--data-dir`` can serve several
  datasets); ``source`` records the directory actually used.
- ``mnist``: the same IDX names, only from ``data_dir``, ``data_dir/mnist`` or ``data_dir/MNIST/raw``.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 0..16), split into 1437 train / 360 test
  with a fixed, seeded, class-balanced draw of the test set (36 per class), independent of any run seed.
- ``mnist1d``: ``mnist1d.data.make_dataset`` with the package's default arguments (5000 samples,
  seed 42, 4000 train / 1000 test, length 40); generated in memory, never downloaded.
- ``cifar10``: the python batches ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (each may be
  ``.gz``) in ``data_dir`` or ``data_dir/cifar-10-batches-py``, or read straight out of
  ``data_dir/cifar-10-python.tar.gz``; unpickled with a restricted unpickler (numpy arrays only).

Raw arrays have a channel axis: ``(N, C, H, W)`` uint8 for images, ``(N, 1, 40)`` float64 for mnist1d;
labels are int64 ``(N,)``. They are read-only and cached per process (keyed on the files' paths, sizes
and modification times), so loading the same dataset twice costs nothing the second time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from singledir.data.formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_bytes, read_cifar_pickle, read_idx
from singledir.data.subset import balanced_subset
from singledir.errors import DataFormatError, DataNotFoundError, SingledirError

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "RawData",
    "candidate_dirs",
    "generate_mnist1d",
    "load_raw",
    "resolve_name",
]

DATASETS = ("fashion-mnist", "digits", "mnist1d", "mnist", "cifar10")

_ALIASES = {
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "mnist-1d": "mnist1d",
}

#: Where Debian's package dataset-fashion-mnist installs the four gzipped IDX files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGIT_CLASSES = [str(i) for i in range(10)]

#: Seed of digits' fixed train/test split (not the run seed: the dataset must not change between runs).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360

_IDX_FILES = (
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
    "t10k-labels-idx1-ubyte[.gz]"
)
_FASHION_HINT = (
    "install Debian's package (apt-get install dataset-fashion-mnist), pass --data-dir DIR holding "
    "train-images-idx3-ubyte[.gz] etc., or use --dataset digits"
)
_IDX_HINT = f"pass --data-dir DIR holding {_IDX_FILES}, or use --dataset digits"
_MNIST_HINT = "download the four MNIST IDX files and " + _IDX_HINT
_CIFAR_HINT = (
    "download cifar-10-python.tar.gz (the CIFAR-10 python version) and pass --data-dir DIR holding it or its "
    "extracted cifar-10-batches-py folder, or use --dataset digits"
)
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@dataclass
class RawData:
    """A dataset as stored: unscaled arrays with a channel axis, class names, and where it came from."""

    x_train: np.ndarray  # (N, C, H, W) uint8 or (N, 1, L) float
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str  # a path, or "sklearn" / "mnist1d"
    scale: float | None  # divide by this to map the stored values to [0, 1]; None: real-valued, no scaling
    details: dict = field(default_factory=dict)  # JSON-able notes about how the data was made


def resolve_name(name: str) -> str:
    """Canonical dataset name (case-insensitive, ``_`` == ``-``, a few aliases); SingledirError if unknown."""
    if not isinstance(name, str):
        raise SingledirError(f"dataset name must be a string, got {name!r}; valid names: {', '.join(DATASETS)}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise SingledirError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """The directories searched, in order, for a file-based dataset (empty list: nowhere to look)."""
    name = resolve_name(name)
    if data_dir is None:
        return [FASHION_MNIST_DEBIAN_DIR] if name == "fashion-mnist" else []
    d = Path(data_dir).expanduser()
    sub = {
        "fashion-mnist": [d / "fashion-mnist", d / "FashionMNIST" / "raw", FASHION_MNIST_DEBIAN_DIR],
        "mnist": [d / "mnist", d / "MNIST" / "raw"],
        "cifar10": [d / "cifar-10-batches-py"],
    }.get(name, [])
    return [d, *sub]


def load_raw(name: str, data_dir: str | os.PathLike | None = None) -> RawData:
    """Load dataset ``name``'s raw arrays (see the module docstring for where each one comes from)."""
    name = resolve_name(name)
    if name in ("fashion-mnist", "mnist"):
        return _load_idx_dataset(name, data_dir)
    if name == "cifar10":
        return _load_cifar10(data_dir)
    if name == "digits":
        return _load_digits()
    return _load_mnist1d()


def _file_key(paths) -> tuple:
    """A cache key that changes when any of the files changes (path, size, mtime)."""
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(key)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


# --------------------------------------------------------------------------------------------------
# IDX datasets: fashion-mnist, mnist


def _idx_names(split: str, kind: str) -> list[str]:
    n = 3 if kind == "images" else 1
    return [f"{split}-{kind}-idx{n}-ubyte", f"{split}-{kind}.idx{n}-ubyte"]


def _find_idx(d: Path, split: str, kind: str) -> Path | None:
    for base in _idx_names(split, kind):
        for suffix in ("", ".gz"):
            p = d / (base + suffix)
            if p.is_file():
                return p
    return None


def _load_idx_dataset(name: str, data_dir) -> RawData:
    dirs = candidate_dirs(name, data_dir)
    hint = _FASHION_HINT if name == "fashion-mnist" else _MNIST_HINT
    if not dirs:
        raise DataNotFoundError(f"{name}: no data directory given and {name} has no default location; {hint}")
    found = next((d for d in dirs if _find_idx(d, "train", "images") is not None), None)
    if found is None:
        raise DataNotFoundError(f"{name}: no IDX files found in {', '.join(map(str, dirs))}; {hint}")
    files = {}
    for split in ("train", "t10k"):
        for kind in ("images", "labels"):
            p = _find_idx(found, split, kind)
            if p is None:
                raise DataNotFoundError(
                    f"{name}: {found} has {files[('train', 'images')].name} but no {_idx_names(split, kind)[0]}[.gz]; "
                    f"{hint}"
                )
            files[(split, kind)] = p
    order = [files[("train", "images")], files[("train", "labels")], files[("t10k", "images")], files[("t10k", "labels")]]
    return _read_idx_files(name, _file_key(order), str(found))


@functools.lru_cache(maxsize=4)
def _read_idx_files(name: str, key: tuple, source: str) -> RawData:
    paths = [Path(k[0]) for k in key]
    arrays = []
    for img_path, lbl_path in (paths[0:2], paths[2:4]):
        x = read_idx(img_path, IDX_IMAGES_MAGIC)
        y = read_idx(lbl_path, IDX_LABELS_MAGIC)
        if x.shape[0] != y.shape[0]:
            raise DataFormatError(f"{img_path}: {x.shape[0]} images but {lbl_path} has {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise DataFormatError(f"{img_path}: contains no images")
        if min(x.shape[1:]) == 0:
            raise DataFormatError(f"{img_path}: empty images of shape {x.shape[1:]}")
        if int(y.max()) >= 10:
            raise DataFormatError(f"{lbl_path}: label {int(y.max())} out of range (expected 0..9)")
        arrays += [x[:, None], y.astype(np.int64)]
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataFormatError(
            f"{paths[2]}: test images are {arrays[2].shape[2:]} but training images are {arrays[0].shape[2:]}"
        )
    _readonly(*arrays)
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return RawData(*arrays, class_names=list(classes), source=source, scale=255.0)


# --------------------------------------------------------------------------------------------------
# CIFAR-10


class _CifarDir:
    """Reads CIFAR-10 files from a directory (each file plain or ``.gz``)."""

    def __init__(self, d: Path):
        self.d = d

    def path(self, fname: str) -> Path | None:
        for p in (self.d / fname, self.d / (fname + ".gz")):
            if p.is_file():
                return p
        return None

    def key(self) -> tuple:
        return _file_key(p for f in [*_CIFAR_TRAIN, "test_batch", "batches.meta"] if (p := self.path(f)))

    def read(self, fname: str) -> tuple[bytes, str]:
        p = self.path(fname)
        return read_bytes(p), str(p)


class _CifarTar:
    """Reads CIFAR-10 files straight out of cifar-10-python.tar.gz (in memory, nothing extracted)."""

    def __init__(self, tar_path: Path):
        self.tar_path = tar_path
        self._members: dict[str, bytes] | None = None

    def _load(self) -> dict[str, bytes]:
        if self._members is None:
            wanted = {f"cifar-10-batches-py/{f}" for f in [*_CIFAR_TRAIN, "test_batch", "batches.meta"]}
            members = {}
            try:
                with tarfile.open(self.tar_path, "r:gz") as tf:
                    for m in tf:
                        if m.name in wanted and m.isfile():
                            members[m.name.split("/", 1)[1]] = tf.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DataFormatError(f"{self.tar_path}: corrupt or truncated tar.gz archive ({e})") from e
            self._members = members
        return self._members

    def path(self, fname: str) -> str | None:
        return f"{self.tar_path}:cifar-10-batches-py/{fname}" if fname in self._load() else None

    def key(self) -> tuple:
        return _file_key([self.tar_path])

    def read(self, fname: str) -> tuple[bytes, str]:
        return self._load()[fname], f"{self.tar_path}:cifar-10-batches-py/{fname}"


def _load_cifar10(data_dir) -> RawData:
    dirs = candidate_dirs("cifar10", data_dir)
    if not dirs:
        raise DataNotFoundError(f"cifar10: no data directory given and CIFAR-10 has no default location; {_CIFAR_HINT}")
    reader = None
    for d in dirs:
        if _CifarDir(d).path("data_batch_1") is not None:
            reader = _CifarDir(d)
            break
    if reader is None:
        tars = [d / _CIFAR_TAR for d in dirs if (d / _CIFAR_TAR).is_file()]
        if tars:
            key = _file_key(tars[:1])
            return _read_cifar(key, tars[0], True)
        raise DataNotFoundError(
            f"cifar10: no CIFAR-10 batches (data_batch_1..5, test_batch) or {_CIFAR_TAR} found in "
            f"{', '.join(map(str, dirs))}; {_CIFAR_HINT}"
        )
    for fname in [*_CIFAR_TRAIN, "test_batch"]:
        if reader.path(fname) is None:
            raise DataNotFoundError(f"cifar10: {reader.d} has data_batch_1 but no {fname}[.gz]; {_CIFAR_HINT}")
    return _read_cifar(reader.key(), reader.d, False)


@functools.lru_cache(maxsize=2)
def _read_cifar(key: tuple, where: Path, is_tar: bool) -> RawData:
    reader = _CifarTar(where) if is_tar else _CifarDir(where)
    for fname in [*_CIFAR_TRAIN, "test_batch"]:
        if reader.path(fname) is None:
            raise DataFormatError(f"{where}: archive has no cifar-10-batches-py/{fname}")
    xs, ys = [], []
    for fname in _CIFAR_TRAIN:
        x, y = _cifar_batch(*reader.read(fname))
        xs.append(x)
        ys.append(y)
    x_test, y_test = _cifar_batch(*reader.read("test_batch"))
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    names = _cifar_meta(*reader.read("batches.meta")) if reader.path("batches.meta") else list(CIFAR10_CLASSES)
    _readonly(x_train, y_train, x_test, y_test)
    details = {} if reader.path("batches.meta") else {"class_names": "batches.meta missing: standard CIFAR-10 names"}
    return RawData(x_train, y_train, x_test, y_test, names, str(where), 255.0, details)


def _str_keys(obj, label: str) -> dict:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{label}: expected a pickled dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin1")
        out[k] = v
    return out


def _cifar_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled CIFAR-10 batch; return images (N, 3, 32, 32) uint8 and labels int64."""
    d = _str_keys(read_cifar_pickle(data, label), label)
    if "data" not in d or "labels" not in d:
        raise DataFormatError(f"{label}: not a CIFAR-10 batch (keys {sorted(map(str, d))}, need b'data' and b'labels')")
    x = d["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        what = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataFormatError(f"{label}: b'data' must be a uint8 array of shape (N, 3072), got a {what}")
    labels = d["labels"]
    if not isinstance(labels, (list, tuple, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise DataFormatError(f"{label}: b'labels' must be a list of integers")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(x):
        raise DataFormatError(f"{label}: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise DataFormatError(f"{label}: contains no images")
    if y.min() < 0 or y.max() >= 10:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataFormatError(f"{label}: label {bad} out of range (expected 0..9)")
    return x.reshape(-1, 3, 32, 32), y


def _cifar_meta(data: bytes, label: str) -> list[str]:
    d = _str_keys(read_cifar_pickle(data, label), label)
    names = d.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataFormatError(f"{label}: b'label_names' must be a list of 10 names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn) and mnist1d (generated)


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 64) pixel values 0..16 and (1797,) targets.

    Reads the CSV that ``sklearn.datasets.load_digits`` reads, found without importing scikit-learn
    (which takes seconds); falls back to ``load_digits`` if the file is not where it is expected.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        a = np.loadtxt(csv, delimiter=",")
        if a.shape == (1797, 65):
            return a[:, :64], a[:, 64]
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataNotFoundError(f"digits: scikit-learn is not importable ({e}); pip install scikit-learn") from e
    d = load_digits()
    return d.data, d.target


@functools.lru_cache(maxsize=1)
def _load_digits() -> RawData:
    images, target = _read_sklearn_digits()
    x = np.rint(images).astype(np.uint8).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8), values 0..16
    y = np.asarray(target, dtype=np.int64)
    test = np.zeros(len(y), dtype=bool)
    test[balanced_subset(y, DIGITS_TEST_SIZE, 10, seed=DIGITS_SPLIT_SEED).numpy()] = True
    arrays = [x[~test], y[~test], x[test], y[test]]
    _readonly(*arrays)
    details = {"split": f"class-balanced test set of {DIGITS_TEST_SIZE} drawn with seed {DIGITS_SPLIT_SEED}"}
    return RawData(*arrays, class_names=list(DIGIT_CLASSES), source="sklearn", scale=16.0, details=details)


def generate_mnist1d(num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D from ``mnist1d.data.make_dataset`` with its default arguments, generated in memory.

    ``num_samples`` overrides the default 5000 (only for quick tests). The package seeds Python's and
    numpy's *global* RNGs (seed 42) -- their states are saved and restored, so calling this has no side
    effect on other code. Returns ``x_train (N, 1, 40) float64, y_train int64, x_test, y_test``.
    Never touches the network (the package's download path, ``get_dataset``, is not used).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise DataNotFoundError(
            f"mnist1d: the mnist1d package is not importable ({e}); pip install mnist1d, or use --dataset digits"
        ) from e
    args = get_dataset_args()
    if num_samples is not None:
        args.num_samples = int(num_samples)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        np.asarray(d["x"], dtype=np.float64)[:, None, :],
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float64)[:, None, :],
        np.asarray(d["y_test"], dtype=np.int64),
    )


@functools.lru_cache(maxsize=1)
def _load_mnist1d() -> RawData:
    arrays = list(generate_mnist1d())
    _readonly(*arrays)
    details = {"generator": "mnist1d.data.make_dataset(get_dataset_args()) -- defaults: 5000 samples, seed 42"}
    return RawData(*arrays, class_names=list(DIGIT_CLASSES), source="mnist1d", scale=None, details=details)
