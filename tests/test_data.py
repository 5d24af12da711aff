"""Tests for singledir.data: real-format files (IDX, CIFAR pickles) written in tmp_path, digits, mnist1d,
the installed Fashion-MNIST, subsets, fingerprints, error messages, and label corruption statistics."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from singledir.data import (
    DATASETS,
    Dataset,
    apply_corruption,
    balanced_subset,
    compute_fingerprint,
    corrupt_labels,
    generate_mnist1d,
    load_dataset,
    read_idx,
    resolve_name,
    write_idx,
)
from singledir.data import sources
from singledir.data.formats import RestrictedUnpickler, read_cifar_pickle
from singledir.errors import DataFormatError, DataNotFoundError, SingledirError

# --------------------------------------------------------------------------------------------------
# Writers for the real formats (independent of the package's own writer)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic 0x00000800 | ndim, big-endian uint32 dims, raw payload."""
    assert array.dtype == np.uint8
    return struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_file(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_set(d: Path, n_train=40, n_test=20, gz=True, seed=0, hw=(28, 28)) -> dict[str, np.ndarray]:
    """Write the four IDX files of a tiny MNIST-like set (labels i % 10, pseudo-random pixels) into d."""
    d.mkdir(parents=True, exist_ok=True)
    def pixels(n, offset):  # deterministic, varied, no RNG (so fingerprints are fixed constants)
        i = np.arange(n * hw[0] * hw[1], dtype=np.int64) + offset
        return ((i * 7919 + (i // 7) ** 2 + seed * 104729) % 256).astype(np.uint8).reshape(n, *hw)

    arrays = {
        "train-images-idx3-ubyte": pixels(n_train, 0),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": pixels(n_test, 10**6),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_file(d / name, idx_bytes(arr), gz)
    return arrays


CIFAR_NAMES = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batch(n: int, rng, label: bytes = b"training batch") -> dict:
    """A dict shaped like a real CIFAR-10 batch (bytes keys, uint8 (N, 3072) data, list of int labels)."""
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.permutation(np.arange(n) % 10)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


class Py2Pickler(pickle._Pickler):
    """Pickles the way the real CIFAR-10 files were written (Python 2 cPickle, protocol 2): bytes and str
    as BINSTRING opcodes, numpy globals under their ``numpy.core`` names."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin1")
        op = pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else pickle.BINSTRING + struct.pack("<i", len(b))
        self.write(op + b)
        self.memoize(obj)

    def save_global(self, obj, name=None):  # classes and functions (numpy's _reconstruct, ndarray, dtype)
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string
    dispatch[type] = save_global


def dumps(obj, protocol) -> bytes:
    if protocol == "py2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        return buf.getvalue()
    return pickle.dumps(obj, protocol=protocol)


def make_cifar_dir(d: Path, per_batch=10, n_test=10, meta=True, gz=False, protocol=pickle.DEFAULT_PROTOCOL, seed=0):
    """Write data_batch_1..5, test_batch (and batches.meta) into d; return the batches written."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(per_batch, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n_test, rng, b"testing batch")
    for name, b in batches.items():
        write_file(d / name, dumps(b, protocol), gz)
    if meta:
        m = {b"num_cases_per_batch": per_batch, b"label_names": CIFAR_NAMES, b"num_vis": 3072}
        write_file(d / "batches.meta", dumps(m, protocol), gz)
    return batches


def expected_norm(raw_train: np.ndarray, raw: np.ndarray, scale=255.0) -> np.ndarray:
    """Reference normalization: per-channel float64 mean/std of the full train split after / scale."""
    tr = raw_train.astype(np.float64) / scale
    axes = (0, *range(2, tr.ndim))
    m, s = tr.mean(axis=axes, keepdims=True), tr.std(axis=axes, keepdims=True)
    return ((raw.astype(np.float64) / scale - m) / s).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# IDX datasets


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_shapes_dtypes_normalization(tmp_path, gz):
    arrays = make_idx_set(tmp_path, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(ds, Dataset) and ds.name == "mnist"
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.source == str(tmp_path)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    train_u8 = arrays["train-images-idx3-ubyte"][:, None]
    # Standardized with the train split's statistics, test included.
    assert abs(ds.x_train.double().mean().item()) < 1e-5 and abs(ds.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    np.testing.assert_allclose(ds.x_train.numpy(), expected_norm(train_u8, train_u8), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        ds.x_test.numpy(), expected_norm(train_u8, arrays["t10k-images-idx3-ubyte"][:, None]), rtol=0, atol=1e-5
    )
    info = ds.info()
    json.dumps(info)  # JSON-able
    assert info["fingerprint"] == ds.fingerprint and info["source"] == str(tmp_path)
    assert info["subset"]["train"] is None and info["num_train"] == 40 and info["input_shape"] == [1, 28, 28]
    assert info["normalization"]["mean"][0] == pytest.approx(train_u8.mean() / 255)


def test_fashion_mnist_from_data_dir_subfolder(tmp_path):
    make_idx_set(tmp_path / "fashion-mnist", gz=True)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)  # found before the Debian location
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot" and len(ds.class_names) == 10
    assert ds.source == str(tmp_path / "fashion-mnist")
    # Same files under the mnist name: a different dataset, a different fingerprint.
    make_idx_set(tmp_path / "mnist", gz=True)
    assert load_dataset("mnist", data_dir=tmp_path).fingerprint != ds.fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path):
    make_idx_set(tmp_path, gz=False, n_train=20, n_test=10, hw=(4, 4))
    a = load_dataset("mnist", data_dir=tmp_path)
    b = load_dataset("mnist", data_dir=tmp_path)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    # A constant computed from the bytes this test writes: proves independence from process and run.
    assert a.fingerprint == compute_fingerprint("mnist", a.x_train, a.y_train, a.x_test, a.y_test)
    assert a.fingerprint == "a70966c6c468f075ae394b16c9bdc6ef7bbf910206698f8607d6fb5e57bb623e"
    # One test pixel changed -> different fingerprint (the file is re-read: its mtime/size key changed).
    p = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(1, 1))
    assert load_dataset("mnist", data_dir=tmp_path).fingerprint != a.fingerprint


def test_write_idx_matches_format_and_roundtrips(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    assert (tmp_path / "a-idx3-ubyte").read_bytes() == idx_bytes(arr)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    f = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f", f)
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), f)


# --------------------------------------------------------------------------------------------------
# Malformed IDX files


def _load_err(tmp_path, name="mnist") -> str:
    with pytest.raises(DataFormatError) as ei:
        load_dataset(name, data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_names_file(tmp_path, gz):
    make_idx_set(tmp_path, gz=gz, n_train=20, n_test=10)
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    full = idx_bytes(np.zeros((20, 28, 28), np.uint8))
    write_file(tmp_path / "train-images-idx3-ubyte", full[:-100], gz)
    msg = _load_err(tmp_path)
    assert str(p) in msg and "truncated" in msg


def test_idx_trailing_bytes_bad_magic_wrong_dims(tmp_path):
    make_idx_set(tmp_path, gz=False, n_train=20, n_test=10)
    p = tmp_path / "t10k-labels-idx1-ubyte"
    good = p.read_bytes()
    p.write_bytes(good + b"\x00")
    assert str(p) in _load_err(tmp_path)
    p.write_bytes(b"\x12\x34\x08\x01" + good[4:])
    msg = _load_err(tmp_path)
    assert str(p) in msg and "bad magic number 0x12340801" in msg
    # A 3-dim image file where labels belong (wrong dims).
    p.write_bytes(idx_bytes(np.zeros((10, 2, 2), np.uint8)))
    msg = _load_err(tmp_path)
    assert str(p) in msg and "expected 0x00000801" in msg


def test_idx_count_mismatch_and_label_range(tmp_path):
    make_idx_set(tmp_path, gz=False, n_train=20, n_test=10)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(idx_bytes((np.arange(19) % 10).astype(np.uint8)))
    msg = _load_err(tmp_path)
    assert "20 images" in msg and str(p) in msg and "19 labels" in msg
    p.write_bytes(idx_bytes(np.full(20, 10, np.uint8)))
    msg = _load_err(tmp_path)
    assert str(p) in msg and "label 10 out of range" in msg


def test_corrupt_gzip(tmp_path):
    make_idx_set(tmp_path, gz=True, n_train=20, n_test=10)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])  # truncated gzip stream
    msg = _load_err(tmp_path)
    assert str(p) in msg and "gzip" in msg
    p.write_bytes(b"\x1f\x8b" + b"garbage" * 20)  # gzip magic, corrupt stream
    assert str(p) in _load_err(tmp_path)
    p.write_bytes(b"not gzip at all")  # .gz name without gzip data
    msg = _load_err(tmp_path)
    assert str(p) in msg and "gzip" in msg


# --------------------------------------------------------------------------------------------------
# Missing data, names


def test_missing_dir_messages(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"  # pretend the Debian package is not installed
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", debian)
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion-mnist")
    assert str(ei.value) == (
        f"fashion-mnist: no IDX files found in {debian}; install Debian's package (apt-get install "
        "dataset-fashion-mnist), pass --data-dir DIR holding train-images-idx3-ubyte[.gz] etc., or use --dataset digits"
    )
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion-mnist", data_dir=tmp_path / "x")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("fashion-mnist: no IDX files found in")
    for part in (f"{tmp_path / 'x'}, {tmp_path / 'x' / 'fashion-mnist'}", str(debian),
                 "apt-get install dataset-fashion-mnist", "--data-dir", "--dataset digits"):  # fmt: skip
        assert part in msg
    with pytest.raises(DataNotFoundError, match=r"^mnist: no data directory given.*--data-dir.*--dataset digits"):
        load_dataset("mnist")
    with pytest.raises(DataNotFoundError, match=r"^cifar10: no CIFAR-10 batches.*cifar-10-batches-py.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path)
    # A partial set names the missing file.
    make_idx_set(tmp_path / "mnist", gz=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="no t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(SingledirError) as ei:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(ei.value)
    assert resolve_name("Fashion_MNIST") == "fashion-mnist" and resolve_name("CIFAR-10") == "cifar10"


# --------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("protocol", ["py2", 4])
def test_cifar_dir_shapes_names_layout_normalization(tmp_path, protocol):
    batches = make_cifar_dir(tmp_path, protocol=protocol)
    if protocol == "py2":  # really the Python 2 layout of the official files
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in (tmp_path / "data_batch_1").read_bytes()
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.class_names == [n.decode() for n in CIFAR_NAMES]
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == labels and ds.y_test.tolist() == batches["test_batch"][b"labels"]
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    # Row layout: 1024 red, then green, then blue, each row-major 32x32.
    assert raw[0, 1, 2, 3] == batches["data_batch_1"][b"data"][0, 1024 + 2 * 32 + 3]
    np.testing.assert_allclose(ds.x_train.numpy(), expected_norm(raw, raw), rtol=0, atol=1e-5)
    per_channel = ds.x_train.double().transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(per_channel.mean(1).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(per_channel.std(1, unbiased=False).numpy(), 1, atol=1e-5)
    assert len(ds.info()["normalization"]["mean"]) == 3


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_subfolder_gz_no_meta_other_protocols(tmp_path, protocol):
    make_cifar_dir(tmp_path / "cifar-10-batches-py", meta=False, gz=True, protocol=protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"  # standard names fallback
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar_from_tarball(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    make_cifar_dir(src)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path)
    ref = load_dataset("cifar10", data_dir=src)
    assert ds.fingerprint == ref.fingerprint and ds.class_names[0] == "plane"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_forbidden_global_is_refused_not_executed(tmp_path):
    make_cifar_dir(tmp_path)
    marker = tmp_path / "PWNED"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(SingledirError) as ei:
        load_dataset("cifar10", data_dir=tmp_path)
    assert isinstance(ei.value, DataFormatError)
    assert str(tmp_path / "data_batch_3") in str(ei.value) and "system" in str(ei.value)
    assert not marker.exists()
    # Directly: any non-numpy global is refused before it is even imported.
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="forbidden global builtins.eval"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    with pytest.raises(DataFormatError, match="^x.pkl: refusing to unpickle"):
        read_cifar_pickle(payload, "x.pkl")
    with pytest.raises(DataFormatError, match="^y.pkl: not a valid"):
        read_cifar_pickle(pickle.dumps({b"data": 1})[:-3], "y.pkl")


def test_cifar_malformed_batches(tmp_path):
    make_cifar_dir(tmp_path)
    p = tmp_path / "test_batch"
    rng = np.random.default_rng(1)
    b = cifar_batch(10, rng)
    b[b"labels"] = b[b"labels"][:-1]
    p.write_bytes(pickle.dumps(b))
    with pytest.raises(DataFormatError, match="10 images but 9 labels"):
        load_dataset("cifar10", data_dir=tmp_path)
    b = cifar_batch(10, rng)
    b[b"data"] = b[b"data"][:, :3000]
    p.write_bytes(pickle.dumps(b))
    with pytest.raises(DataFormatError, match=r"test_batch: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    b = cifar_batch(10, rng)
    b[b"labels"][0] = 12
    p.write_bytes(pickle.dumps(b))
    with pytest.raises(DataFormatError, match="label 12 out of range"):
        load_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError, match="no data_batch_4"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# Subsets


def test_train_subset_balanced_deterministic_same_normalization(tmp_path):
    make_idx_set(tmp_path, gz=False, n_train=60, n_test=20, hw=(6, 6))
    full = load_dataset("mnist", data_dir=tmp_path)
    a = load_dataset("mnist", data_dir=tmp_path, train_subset=20, seed=3)
    b = load_dataset("mnist", data_dir=tmp_path, train_subset=20, seed=3)
    c = load_dataset("mnist", data_dir=tmp_path, train_subset=20, seed=4)
    assert torch.bincount(a.y_train, minlength=10).tolist() == [2] * 10
    assert torch.equal(a.x_train, b.x_train) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.x_train, c.x_train) and a.fingerprint != c.fingerprint != full.fingerprint
    # The subset rows are rows of the full set, unchanged (normalization uses the full train split).
    rows = {tuple(r.tolist()) for r in full.x_train.reshape(60, -1)}
    assert all(tuple(r.tolist()) in rows for r in a.x_train.reshape(20, -1))
    assert torch.equal(a.x_test, full.x_test)  # test set never subset by default
    assert a.info()["subset"]["train"] == 20 and a.info()["subset"]["seed"] == 3
    odd = load_dataset("mnist", data_dir=tmp_path, train_subset=25, seed=0)
    counts = torch.bincount(odd.y_train, minlength=10)
    assert counts.sum() == 25 and set(counts.tolist()) == {2, 3}
    t = load_dataset("mnist", data_dir=tmp_path, test_subset=10)
    assert torch.bincount(t.y_test, minlength=10).tolist() == [1] * 10 and t.x_train.shape[0] == 60
    with pytest.raises(SingledirError, match="larger than"):
        load_dataset("mnist", data_dir=tmp_path, train_subset=61)
    with pytest.raises(SingledirError, match="smaller than the number of classes"):
        load_dataset("mnist", data_dir=tmp_path, train_subset=9)


def test_balanced_subset_water_filling():
    y = np.array([0] * 1 + [1] * 50 + [2] * 50)
    idx = balanced_subset(y, 31, 3, seed=0)
    assert idx.dtype == torch.int64 and torch.all(idx[1:] > idx[:-1])
    assert np.bincount(y[idx.numpy()], minlength=3).tolist() == [1, 15, 15]
    assert torch.equal(idx, balanced_subset(torch.as_tensor(y), 31, 3, seed=0))
    with pytest.raises(SingledirError, match="integer"):
        balanced_subset(y, 10.5, 3)


# --------------------------------------------------------------------------------------------------
# Bundled / generated datasets


def test_digits():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.source == "sklearn" and ds.class_names == [str(i) for i in range(10)]
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [36] * 10
    assert abs(ds.x_train.double().mean().item()) < 1e-6
    assert load_dataset("digits").fingerprint == ds.fingerprint
    sub = load_dataset("digits", train_subset=100, seed=1)
    assert torch.bincount(sub.y_train, minlength=10).tolist() == [10] * 10


def test_mnist1d_small(monkeypatch):
    state = np.random.get_state()[1].copy()
    a = generate_mnist1d(100)
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG state restored
    b = generate_mnist1d(100)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))  # seeded, deterministic
    assert a[0].shape == (80, 1, 40) and a[2].shape == (20, 1, 40)
    # The full loader path, on a small generated set.
    monkeypatch.setattr(sources, "generate_mnist1d", lambda: a)
    sources._load_mnist1d.cache_clear()
    try:
        ds = load_dataset("mnist1d")
    finally:
        sources._load_mnist1d.cache_clear()
    assert ds.x_train.shape == (80, 1, 40) and ds.input_shape == (1, 40) and ds.x_train.dtype == torch.float32
    assert ds.num_classes == 10 and ds.source == "mnist1d" and ds.y_train.dtype == torch.int64
    assert abs(ds.x_train.double().mean().item()) < 1e-6 and abs(ds.x_train.double().std(unbiased=False).item() - 1) < 1e-5


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} not present (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_debian():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10 and torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.source == str(FASHION_DIR) and ds.class_names[0] == "T-shirt/top"
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-4
    assert ds.info()["normalization"]["mean"][0] == pytest.approx(0.2860406, abs=1e-6)
    # The canonical files give the canonical fingerprint (changes only if the data or normalization does).
    assert ds.fingerprint == "0d94c9a7514593e3f51e9dc50fc75605559f52e9a2c04497b453b7d191ae209a"


# --------------------------------------------------------------------------------------------------
# Label corruption


def _balanced_labels(n=10000, k=10):
    return torch.arange(n) % k


def _tolerance(k, q=0.9):
    """5 binomial standard deviations of the number changed among k corrupted examples, plus 1."""
    return 5 * math.sqrt(k * q * (1 - q)) + 1


@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_shuffle_statistics(p):
    y = _balanced_labels()
    before = y.clone()
    new, changed = corrupt_labels(y, p, 10, method="shuffle", seed=7)
    assert torch.equal(y, before)  # input untouched
    assert new.dtype == torch.int64 and changed.dtype == torch.bool
    assert torch.equal(changed, new != y)
    assert torch.equal(torch.bincount(new, minlength=10), torch.bincount(y, minlength=10))  # counts preserved
    k = round(p * len(y))
    assert abs(int(changed.sum()) - 0.9 * k) <= _tolerance(k)
    assert int(changed.sum()) <= k


def test_uniform_statistics():
    y = _balanced_labels()
    new, changed = corrupt_labels(y, 0.6, 10, method="uniform", seed=1)
    k = round(0.6 * len(y))
    assert abs(int(changed.sum()) - 0.9 * k) <= _tolerance(k) and int(changed.sum()) <= k
    assert torch.equal(changed, new != y) and int(new.min()) >= 0 and int(new.max()) <= 9


def test_corruption_edges_and_determinism():
    y = _balanced_labels(1000)
    for method in ("shuffle", "uniform"):
        new, changed = corrupt_labels(y, 0.0, 10, method=method)
        assert torch.equal(new, y) and not changed.any()
        a = corrupt_labels(y, 0.5, 10, method=method, seed=3)
        b = corrupt_labels(y, 0.5, 10, method=method, seed=3)
        c = corrupt_labels(y, 0.5, 10, method=method, seed=4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(SingledirError, match=r"--corrupt must be in \[0, 1\]"):
            corrupt_labels(y, bad, 10)
    with pytest.raises(SingledirError, match=r"--corrupt must be in \[0, 1\], got 1.5$"):
        corrupt_labels(y, 1.5, 10)
    with pytest.raises(SingledirError, match="unknown corruption method 'flip'.*shuffle"):
        corrupt_labels(y, 0.5, 10, method="flip")
    with pytest.raises(SingledirError, match="0..9"):
        corrupt_labels(torch.tensor([0, 10]), 0.5, 10)


def test_apply_corruption_leaves_test_set_and_fingerprint(tmp_path):
    make_idx_set(tmp_path, gz=False, n_train=50, n_test=20, hw=(4, 4))
    ds = load_dataset("mnist", data_dir=tmp_path)
    y_test, x_test, y_train = ds.y_test.clone(), ds.x_test.clone(), ds.y_train.clone()
    noisy, clean, changed = apply_corruption(ds, 1.0, "shuffle", seed=0)
    assert torch.equal(noisy.y_test, y_test) and torch.equal(noisy.x_test, x_test)
    assert torch.equal(ds.y_train, y_train) and torch.equal(clean, y_train)  # original untouched
    assert torch.equal(changed, noisy.y_train != clean) and changed.any()
    assert noisy.fingerprint == ds.fingerprint and torch.equal(noisy.x_train, ds.x_train)
    rec = noisy.info()["corruption"]
    assert rec == {"p": 1.0, "method": "shuffle", "seed": 0, "num_corrupted": 50, "num_changed": int(changed.sum())}
    assert "corruption" not in ds.info()
    with pytest.raises(SingledirError, match="already corrupted"):
        apply_corruption(noisy, 0.5, "shuffle", 0)
