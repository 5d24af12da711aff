"""Small ResNet-18-style network (CIFAR variant, written by hand): 3x3 stem, 4 stages of 2 BasicBlocks.

Layout::

    stem   = Sequential(Conv3x3(C0), BN, ReLU)                 # C0 = 64 * width_mult, stride 1
    layer1 = Sequential(BasicBlock, BasicBlock)   64 * w, stride 1
    layer2 = ...                                 128 * w, stride 2
    layer3 = ...                                 256 * w, stride 2
    layer4 = ...                                 512 * w, stride 2
    head   = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(512 * w, num_classes))

BasicBlock: ``relu(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN
when the shape changes, else the identity. The block's OUTPUT is post-ReLU, so unit layers are the
blocks themselves (as in the paper's ResNet-50 ablation of block outputs): ``stem, layer1.0, layer1.1,
..., layer4.1``. ``batchnorm=False`` puts ``nn.Identity`` where the BNs were (and gives convs a bias).
No max-pool in the stem (small images). Convs use He-normal init (see ``_common``). No dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from singledir.models._common import check_image_model, he_init_, scale_channels

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual shortcut; output = ReLU(branch + shortcut), i.e. post-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        bias = not batchnorm
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(out_ch, batchnorm)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(out_ch, batchnorm)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias), _norm(out_ch, batchnorm)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18-style: stem + 4 stages x 2 BasicBlocks + global-average-pool + linear head."""

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
            "resnet", input_shape, num_classes, width_mult, batchnorm, dropout)

        stem_ch = scale_channels(STAGE_CHANNELS[0], width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], stem_ch, 3, stride=1, padding=1, bias=not batchnorm),
            _norm(stem_ch, batchnorm),
            nn.ReLU(),
        )
        unit_layers = ["stem"]
        in_ch = stem_ch
        for s, (ch, stride) in enumerate(zip(STAGE_CHANNELS, STAGE_STRIDES), start=1):
            out_ch = scale_channels(ch, width_mult)
            blocks = []
            for b in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(in_ch, out_ch, stride if b == 0 else 1, batchnorm))
                unit_layers.append(f"layer{s}.{b}")
                in_ch = out_ch
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        he_init_(self)

        self.unit_layers: list[str] = unit_layers
        self.config: dict = {
            "name": "resnet",
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "width_mult": width_mult,
            "batchnorm": batchnorm,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)
