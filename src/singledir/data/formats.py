"""Readers (and a writer) for the on-disk dataset formats: IDX files and CIFAR-10 python pickles.

Offers:

- :func:`read_bytes` -- a file's bytes, gunzipped when it is gzip data (by magic number or ``.gz`` name)
- :func:`parse_idx` / :func:`read_idx` -- an IDX file (MNIST, Fashion-MNIST) as a numpy array, fully
  validated: magic number, type code, dimensions, header/payload size agreement
- :func:`write_idx` -- write an array as an IDX file (optionally gzipped); handy for tests and fixtures
- :func:`read_cifar_pickle` -- unpickle a CIFAR-10 batch with :class:`RestrictedUnpickler`, which
  allows only the globals that numpy arrays need (nothing that could run code)

Every problem with a file's contents raises :class:`singledir.errors.DataFormatError` whose one-line
message starts with the file's path and says what is wrong. Nothing here ever returns a silently
short array.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from singledir.errors import DataFormatError, DataNotFoundError, SingledirError
from singledir.io import atomic_write_bytes

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "RestrictedUnpickler",
    "parse_idx",
    "read_bytes",
    "read_cifar_pickle",
    "read_idx",
    "write_idx",
]

#: Magic number of an IDX file of unsigned bytes with 3 dimensions (N, H, W): images.
IDX_IMAGES_MAGIC = 0x00000803
#: Magic number of an IDX file of unsigned bytes with 1 dimension (N,): labels.
IDX_LABELS_MAGIC = 0x00000801

# IDX type code (third byte of the magic number) -> big-endian numpy dtype.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _IDX_TYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the bytes of ``path``, decompressed if it is gzip data (gzip magic or a ``.gz`` name).

    Raises DataFormatError for corrupt or truncated gzip data, SingledirError if the file cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataNotFoundError(f"{path}: no such file") from e
    except OSError as e:
        raise SingledirError(f"{path}: cannot read file ({e.strerror or e})") from e
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if path.suffix == ".gz":
        raise DataFormatError(f"{path}: not gzip data although the name ends in .gz (bad gzip magic number)")
    return data


def parse_idx(data: bytes, label: str = "<bytes>") -> tuple[int, np.ndarray]:
    """Parse IDX ``data``; return ``(magic, array)`` with the array in native byte order.

    ``label`` (usually the file's path) starts every error message. Checks: the magic number (two zero
    bytes, a known type code, at least one dimension), a complete header, and that the payload has
    exactly prod(dims) * itemsize bytes (a shorter file is truncated, a longer one malformed).
    """
    if len(data) < 4:
        raise DataFormatError(f"{label}: too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
        raise DataFormatError(
            f"{label}: bad magic number 0x{magic:08x}, not an IDX file "
            f"(expected 0x{IDX_IMAGES_MAGIC:08x} for images or 0x{IDX_LABELS_MAGIC:08x} for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{label}: truncated IDX header (magic says {ndim} dimensions, file has {len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    count = math.prod(dims)  # Python ints: no int64 overflow (dims of 2**16 x 2**16 x 2**32 are not 0 elements)
    expected = count * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes"
        raise DataFormatError(
            f"{label}: size mismatch ({what}): header says dims {tuple(dims)} = {expected} bytes of data, "
            f"file has {payload}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return magic, arr


def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) and return its array (read-only for uint8 data).

    ``expect_magic`` (e.g. :data:`IDX_IMAGES_MAGIC`) also checks the type code and number of dimensions.
    """
    path = Path(path)
    magic, arr = parse_idx(read_bytes(path), str(path))
    if expect_magic is not None and magic != expect_magic:
        raise DataFormatError(
            f"{path}: magic number 0x{magic:08x} ({arr.dtype}, {arr.ndim} dims), expected 0x{expect_magic:08x} "
            f"({_IDX_TYPES.get((expect_magic >> 8) & 0xFF, '?')}, {expect_magic & 0xFF} dims)"
        )
    return arr


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``compress`` or, by default, if the name ends in .gz).

    Written atomically (:func:`singledir.io.atomic_write_bytes`). Returns the path.
    """
    path = Path(path)
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if key not in _IDX_CODES or arr.ndim == 0 or arr.ndim > 255:
        raise SingledirError(f"write_idx: cannot store a {arr.ndim}-dim {arr.dtype} array in IDX")
    code = _IDX_CODES[key]
    blob = (
        struct.pack(">BBBB", 0, 0, code, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + np.ascontiguousarray(arr, dtype=_IDX_TYPES[code]).tobytes()
    )
    if compress or (compress is None and path.suffix == ".gz"):
        blob = gzip.compress(blob, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, blob)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 pickles


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled CIFAR batch may name: what numpy arrays (and py3 bytes) need."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        # Arrays pickled with protocol <= 4 (the real CIFAR files: Python 2, _reconstruct + ndarray + dtype).
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _reconstruct
        # Arrays pickled with protocol 5 (Python 3 re-pickles): a plain constructor from a byte buffer.
        allowed[(f"{mod}.numeric", "_frombuffer")] = _frombuffer
    # Python 3 ``bytes`` pickled with protocol 2 are stored as _codecs.encode(str, "latin1").
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy arrays need; any other global is refused.

    A CIFAR-10 batch is a dict of bytes keys holding bytes, ints, lists and one numpy array, so the
    allowed globals are exactly numpy's array and dtype constructors (``numpy.ndarray``,
    ``numpy.dtype``, ``numpy[._]core.multiarray._reconstruct``, ``numpy[._]core.numeric._frombuffer``)
    and ``_codecs.encode`` (how Python 3 pickles bytes in protocol 2). Anything else -- ``os.system``,
    ``builtins.eval``, any class -- raises :class:`pickle.UnpicklingError` before it is imported, so it
    can never run. Persistent ids are refused too (the base class's default).
    """

    _ALLOWED: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):  # noqa: D102 - documented on the class
        allowed = type(self)._ALLOWED
        if allowed is None:
            allowed = type(self)._ALLOWED = _numpy_globals()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def read_cifar_pickle(data: bytes, label: str = "<bytes>"):
    """Unpickle ``data`` (one CIFAR-10 file's bytes) with :class:`RestrictedUnpickler`, ``encoding="bytes"``.

    Returns the unpickled object (a dict for real CIFAR files; the caller validates its contents).
    A forbidden global or any malformed/truncated pickle raises DataFormatError naming ``label``.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("forbidden global"):
            raise DataFormatError(
                f"{label}: refusing to unpickle: it names the {str(e)[len('forbidden global '):]} global, but a "
                "CIFAR-10 batch holds only dicts, lists, bytes and numpy arrays (corrupt or not a CIFAR file)"
            ) from None
        raise DataFormatError(f"{label}: not a valid pickle ({e})") from None
    except Exception as e:  # untrusted bytes: any failure inside the unpickler is a format problem
        raise DataFormatError(f"{label}: not a valid CIFAR-10 pickle ({type(e).__name__}: {e})") from None
