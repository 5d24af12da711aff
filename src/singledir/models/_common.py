"""Helpers shared by the model modules: argument checks, channel scaling, weight initialization.

Every check raises :class:`singledir.errors.SingledirError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from torch import nn

from singledir.errors import SingledirError


def _as_int(value) -> int | None:
    """``value`` as a Python int if it is an integer (int, numpy/torch integer), else None (bools too)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_input_shape(input_shape) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints (JSON gives lists; both are accepted)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise SingledirError(
            f"input_shape must be a sequence of positive ints such as (1, 28, 28), got {input_shape!r}"
        )
    shape = tuple(_as_int(d) for d in input_shape)
    if not shape or not all(d is not None and d >= 1 for d in shape):
        raise SingledirError(
            f"input_shape must be a non-empty sequence of positive ints such as (1, 28, 28), "
            f"got {input_shape!r}"
        )
    return shape


def check_image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` or raise: convolutional models need image input."""
    if len(input_shape) != 3:
        raise SingledirError(
            f"model {name!r} needs image input (C, H, W), got input_shape {tuple(input_shape)}; "
            f"use --model mlp for 1-D data such as mnist1d"
        )
    return input_shape  # type: ignore[return-value]


def check_num_classes(num_classes) -> int:
    value = _as_int(num_classes)
    if value is None or value < 2:
        raise SingledirError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return value


def check_width(width) -> int:
    value = _as_int(width)
    if value is None or value < 1:
        raise SingledirError(f"width (hidden units per MLP layer) must be an int >= 1, got {width!r}")
    return value


def check_depth(depth) -> int:
    value = _as_int(depth)
    if value is None or value < 1:
        raise SingledirError(f"depth (number of MLP hidden layers) must be an int >= 1, got {depth!r}")
    return value


def check_width_mult(width_mult) -> float:
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not math.isfinite(width_mult)
        or width_mult <= 0
    ):
        raise SingledirError(f"width_mult must be a number > 0 (e.g. 0.125 for CPU runs), got {width_mult!r}")
    return float(width_mult)


def check_dropout(dropout) -> float:
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not (0.0 <= dropout < 1.0)  # also rejects NaN
    ):
        raise SingledirError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def check_batchnorm(batchnorm, default: bool) -> bool:
    if batchnorm is None:
        return default
    if not isinstance(batchnorm, bool):
        raise SingledirError(f"batchnorm must be True, False or None (model default), got {batchnorm!r}")
    return batchnorm


def no_dropout(dropout: float, name: str) -> None:
    if dropout > 0:
        raise SingledirError(
            f"model {name!r} does not support dropout (got {dropout}); only --model mlp supports it, "
            f"use --dropout 0"
        )


def check_image_model(name: str, input_shape, num_classes, width_mult, batchnorm, dropout
                      ) -> tuple[tuple[int, int, int], int, float, bool]:
    """The checked ``(input_shape, num_classes, width_mult, batchnorm)`` of the image model ``name`` (no
    dropout; batch norm on by default), or a one-line :class:`SingledirError`."""
    input_shape = check_image_shape(check_input_shape(input_shape), name)
    num_classes, width_mult = check_num_classes(num_classes), check_width_mult(width_mult)
    no_dropout(check_dropout(dropout), name)
    return input_shape, num_classes, width_mult, check_batchnorm(batchnorm, default=True)


def scale_channels(channels: int, width_mult: float) -> int:
    """``round(channels * width_mult)``, at least 1 (0.125 turns 64 into 8)."""
    return max(1, int(round(channels * width_mult)))


def he_init_(module: nn.Module) -> None:
    """He (Kaiming) normal init, fan_in, for every conv; zero biases; BN gamma 1 / beta 0.

    Chosen so that the forward signal keeps its scale through all layers even without batch norm
    (PyTorch's default conv init shrinks the activation variance ~6x per ReLU layer, which an 11-layer
    plain network without batch norm does not survive). Linear layers keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
