"""Image augmentation on the trainer, torchvision v2: random resized crop, flip, small rotation, colour
jitter, each image drawn independently; MixUp / CutMix optional. Validation images are only scaled."""

from __future__ import annotations

import torch


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×C×H×W`` → float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def augmenter(size: int, channels: int, flip: bool = True, rotation: float = 10.0):
    """A function: uint8 batch → augmented, normalised float batch."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.RandomRotation(rotation))
    steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2 if channels == 3 else 0))
    one = v2.Compose(steps)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return normalise(torch.stack([one(img) for img in x]))

    return apply


def mixer(kind: str | None, classes: int):
    """MixUp or CutMix over a batch (labels become soft), or None."""
    if not kind:
        return None
    from torchvision.transforms import v2

    mix = {"mixup": v2.MixUp, "cutmix": v2.CutMix}[kind](num_classes=classes)
    return lambda x, y: mix(x, y)
