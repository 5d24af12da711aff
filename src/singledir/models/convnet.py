"""The paper's 11-layer CIFAR ConvNet: 3x3 conv -> BN -> ReLU (x11), global average pool, linear head.

Channels 64,64,128,128,128,256,256,256,512,512,512 (each times ``width_mult``, rounded, at least 1);
strides 1,1,2,1,1,2,1,1,2,1,1; padding 1. Conv layers have a bias only when there is no batch norm.

``features`` is ONE flat ``nn.Sequential`` so the unit layers are the ReLU modules in it:
``features.2, features.5, ..., features.32`` with batch norm, ``features.1, features.3, ...,
features.21`` without. A unit is one feature map (dim 1 of the (N, C, H, W) activation).

Head (the paper leaves it open; this is option 1 of the paper notes): ``head = Sequential(
AdaptiveAvgPool2d(1), Flatten(), Linear(C, num_classes))``. Global average pooling makes the network
accept any (C, H, W) image (1x28x28, 3x32x32, 1x8x8 ...). Convs use He-normal init (see ``_common``).
Dropout is not supported here (only the MLP has it).
"""

from __future__ import annotations

import torch
from torch import nn

from singledir.models._common import check_image_model, he_init_, scale_channels

CHANNELS = (64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512)
STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1)


class ConvNet(nn.Module):
    """Eleven 3x3 conv layers (conv -> [BN] -> ReLU) and a global-average-pool + linear head."""

    def __init__(
        self,
        input_shape,
        num_classes: int,
        *,
        width_mult: float = 1.0,
        batchnorm: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        input_shape, num_classes, width_mult, batchnorm = check_image_model(
            "convnet", input_shape, num_classes, width_mult, batchnorm, dropout)

        layers: list[nn.Module] = []
        unit_layers: list[str] = []
        in_ch = input_shape[0]
        for ch, stride in zip(CHANNELS, STRIDES):
            out_ch = scale_channels(ch, width_mult)
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU())
            unit_layers.append(f"features.{len(layers) - 1}")
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        he_init_(self.features)

        self.unit_layers: list[str] = unit_layers
        self.config: dict = {
            "name": "convnet",
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "width_mult": width_mult,
            "batchnorm": batchnorm,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
