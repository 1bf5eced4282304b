"""Models: an MLP for tabular rows; for images a ResNet-18 or a compact CNN (random init: no weights are
downloaded)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear → BatchNorm → ReLU → Dropout blocks, then a linear head producing class logits."""

    def __init__(self, inputs: int, classes: int, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def resnet18(classes: int, channels: int, size: int, dropout: float = 0.0) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised, adapted to small inputs and any channel count.

    Below 64 pixels the ImageNet stem (7x7 stride-2 convolution, then max-pooling) would
    shrink a 32x32 image to 8x8 before the first block; it becomes a 3x3 stride-1
    convolution without pooling, as is usual for CIFAR-sized images.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=classes)
    if size < 64:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if dropout:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def small_cnn(classes: int, channels: int, dropout: float = 0.0) -> nn.Module:
    """A compact CNN for small, low-detail images (the digits sample, icons, thumbnails): three 3x3
    convolution blocks (32, 32, 64 channels) with batch norm, two 2x2 poolings, global average pooling and
    a linear head. At 16 px it costs about a fortieth of the small-input ResNet-18's FLOPs per image, which
    is what makes a CPU epoch of a few thousand images take seconds, not minutes."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(channels, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(64, classes))


def build(kind: str, *, inputs: int = 0, classes: int, channels: int = 3, size: int = 32, name: str | None = None,
          hidden: tuple[int, ...] = (128, 64), dropout: float = 0.2) -> nn.Module:  # fmt: skip
    """The model for a gold table's kind, or the one named (``mlp`` | ``cnn`` | ``resnet18``). Convolutional
    models hold their weights channels-last (NHWC): oneDNN on the CPU and cuDNN's tensor cores run convolutions
    and pooling faster in that layout (the digits CNN's CPU epoch: 25% less time on one thread, 12% on two)."""
    name = name or ("resnet18" if kind == "images" else "mlp")
    if name == "mlp":
        if kind == "images":
            return nn.Sequential(nn.Flatten(), MLP(channels * size * size, classes, hidden, dropout))
        return MLP(inputs, classes, hidden, dropout)
    if name == "resnet18":
        if kind != "images":
            raise ValueError("model resnet18 needs an image table; tabular tables use mlp")
        return resnet18(classes, channels, size, dropout).to(memory_format=torch.channels_last)
    if name == "cnn":
        if kind != "images":
            raise ValueError("model cnn needs an image table; tabular tables use mlp")
        return small_cnn(classes, channels, dropout).to(memory_format=torch.channels_last)
    raise ValueError(f"unknown model {name!r}: use mlp, cnn or resnet18")
