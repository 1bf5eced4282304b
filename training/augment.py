"""Image augmentation on the trainer's device, batched with Kornia: random resized crop, flip, small
rotation, colour jitter, with parameters drawn for each image but applied to the whole batch at once
(torchvision's v2 transforms draw one set of parameters per call, so they had to run image by image in
Python, 4× slower on the CPU). MixUp / CutMix optional. Validation images are only scaled."""

from __future__ import annotations

import torch


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×C×H×W`` → float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def augmenter(size: int, channels: int, flip: bool = False, rotation: float = 10.0):
    """A function: uint8 batch (on any device) → augmented, normalised float batch on that device. Draws come
    from torch's global generator, so a seeded epoch augments the same way again."""
    import kornia.augmentation as K

    steps = [K.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1))]
    if flip:
        steps.append(K.RandomHorizontalFlip())
    steps.append(K.RandomRotation(rotation, p=1.0))
    jitter = {"saturation": 0.2} if channels == 3 else {}
    steps.append(K.ColorJitter(brightness=0.2, contrast=0.2, p=1.0, **jitter))
    pipeline = K.AugmentationSequential(*steps)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return pipeline(x.float().div(255.0)).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)

    return apply


def mixer(kind: str | None, classes: int):
    """MixUp or CutMix over a batch (labels become soft), or None."""
    if not kind:
        return None
    from torchvision.transforms import v2

    mix = {"mixup": v2.MixUp, "cutmix": v2.CutMix}[kind](num_classes=classes)
    return lambda x, y: mix(x, y)
