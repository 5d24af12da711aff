"""Datasets for singledir: loading (IDX, CIFAR pickles, digits, mnist1d), fingerprints, subsets, label corruption.

Offers:

- :data:`DATASETS` -- ``("fashion-mnist", "digits", "mnist1d", "mnist", "cifar10")``
- :class:`Dataset` -- normalized train/test tensors plus name, classes, fingerprint, source; ``info()``
- :func:`load_dataset` -- ``load_dataset(name, data_dir=None, train_subset=None, seed=0, *, test_subset=None)``
- :func:`corrupt_labels` -- ``corrupt_labels(labels, p, num_classes, method="shuffle", seed=0)
  -> (new_labels, changed_mask)``
- :func:`apply_corruption` -- ``apply_corruption(dataset, p, method="shuffle", seed=0)
  -> (corrupted_dataset, clean_labels, changed_mask)``
- :func:`balanced_subset`, :func:`compute_fingerprint`, :func:`generate_mnist1d`
- readers: :func:`read_idx`, :func:`write_idx`, :func:`read_cifar_pickle`

Modules: ``formats`` (file formats), ``sources`` (registry: where each dataset comes from),
``datasets`` (normalization, fingerprint, :class:`Dataset`), ``subset``, ``corruption``.

Example::

    from singledir.data import load_dataset, apply_corruption
    ds = load_dataset("fashion-mnist", train_subset=1000, seed=0)
    noisy, clean, changed = apply_corruption(ds, p=0.4, method="shuffle", seed=0)
"""

from singledir.data.corruption import CORRUPTION_METHODS, apply_corruption, corrupt_labels
from singledir.data.datasets import DATASETS, Dataset, channel_stats, compute_fingerprint, load_dataset
from singledir.data.formats import read_cifar_pickle, read_idx, write_idx
from singledir.data.sources import FASHION_MNIST_DEBIAN_DIR, generate_mnist1d, resolve_name
from singledir.data.subset import balanced_subset

__all__ = [
    "CORRUPTION_METHODS",
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "Dataset",
    "apply_corruption",
    "balanced_subset",
    "channel_stats",
    "compute_fingerprint",
    "corrupt_labels",
    "generate_mnist1d",
    "load_dataset",
    "read_cifar_pickle",
    "read_idx",
    "resolve_name",
    "write_idx",
]
