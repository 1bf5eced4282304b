"""Image augmentation on the trainer's device, the whole batch in a few kernels: random resized crop, flip
and small rotation as one affine warp per image (``affine_grid`` + ``grid_sample``: one resampling, where
separate crop and rotation steps resample twice), then brightness, contrast and saturation with per-image
factors. The parameters are drawn for each image on the CPU from torch's global generator (a seeded epoch
augments the same way again, on any device) and reach the device in one copy.

Kornia's ``AugmentationSequential`` did the same steps in about 2,350 operator calls per batch of 256 images
(most of them per image), which on a GPU took over half of a ResNet-18 epoch at 32 px (README, GPU); this
makes 97 per batch whatever its size, most of them on the parameters' small CPU tensors. Each step is checked against torchvision's functional transform that defines it
(``tests/unit/test_augment.py``). MixUp / CutMix optional. Validation images are only scaled."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×C×H×W`` → float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def theta(width: torch.Tensor, height: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, angle: torch.Tensor,
          mirror: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``N×2×3`` sampling matrices for ``affine_grid`` (``align_corners=False``): the output square is the crop
    of ``width × height`` (fractions of the image) centred at ``(cx, cy)`` (normalised, -1..1), resized,
    mirrored where ``mirror`` is -1, and turned counter-clockwise by ``angle`` radians about its centre."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    row0 = torch.stack([width * mirror * cos, -width * mirror * sin, cx], dim=1)
    row1 = torch.stack([height * sin, height * cos, cy], dim=1)
    return torch.stack([row0, row1], dim=1)


def warp(x: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image of the float batch ``x`` through its matrix into ``size × size`` (bilinear, zeros
    outside the image, as torchvision's rotate fills)."""
    grid = F.affine_grid(matrices, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gray(x: torch.Tensor) -> torch.Tensor:
    """``N×1×H×W`` luma of a float batch (the batch itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)  # as torchvision's rgb_to_grayscale, no weights to copy to the device
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).unsqueeze(1)


def jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
           saturation: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """torchvision's ``adjust_brightness``, ``adjust_contrast`` and ``adjust_saturation`` in that order on a
    float batch in [0, 1], one factor per image (``N``), in place."""
    x.mul_(brightness.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    c = contrast.view(-1, 1, 1, 1)
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x.mul_(c).add_(mean * (1.0 - c)).clamp_(0.0, 1.0)
    if saturation is not None and x.shape[1] == 3:
        s = saturation.view(-1, 1, 1, 1)
        luma = gray(x)  # before x changes in place
        x.mul_(s).add_(luma * (1.0 - s)).clamp_(0.0, 1.0)
    return x


def augmenter(size: int, channels: int, flip: bool = False, rotation: float = 10.0,
              scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (0.9, 1.1),
              brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):  # fmt: skip
    """A function: uint8 batch (on any device) → augmented, normalised float batch on that device. Per image:
    a crop of ``scale`` of the area at aspect ``ratio`` (log-uniform; clipped to the image rather than drawn
    again), a mirror with probability ½ when ``flip``, a turn of up to ``rotation`` degrees either way, then
    brightness, contrast and (three channels) saturation factors in ``1 ± the given amount``."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def apply(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.rand(n, 9)  # every draw of the batch at once, on the CPU
        area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
        aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, 1])
        cw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
        ch = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
        cx, cy = (2 * u[:, 2] - 1) * (1 - cw), (2 * u[:, 3] - 1) * (1 - ch)
        angle = torch.deg2rad((2 * u[:, 4] - 1) * rotation)
        mirror = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
        factors = 1 + (2 * u[:, 6:9] - 1) * torch.tensor([brightness, contrast, saturation])
        packed = torch.cat([theta(cw, ch, cx, cy, angle, mirror).flatten(1), factors], dim=1)
        packed = packed.to(x.device, non_blocking=True)  # one copy to the device
        out = warp(x.float(), packed[:, :6].view(n, 2, 3), size).div_(255.0)
        out = jitter(out, packed[:, 6], packed[:, 7], packed[:, 8] if channels == 3 else None)
        return out.mul_(2.0).sub_(1.0)

    return apply


def mixer(kind: str | None, classes: int):
    """MixUp or CutMix over a batch (labels become soft), or None."""
    if not kind:
        return None
    from torchvision.transforms import v2

    mix = {"mixup": v2.MixUp, "cutmix": v2.CutMix}[kind](num_classes=classes)
    return lambda x, y: mix(x, y)
