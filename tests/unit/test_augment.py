"""The batched augmentation against the torchvision functional transforms that define each step, and its cost
per batch (operator calls independent of the batch's size)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from training import augment

BILINEAR = InterpolationMode.BILINEAR


def _ones(n: int = 2) -> torch.Tensor:
    return torch.ones(n)


def _images(channels: int = 3, size: int = 20) -> torch.Tensor:
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("degrees", [7.0, -7.0, 90.0])
def test_the_turn_is_torchvisions_rotate(degrees):
    x, one = _images(), _ones()
    m = augment.theta(one, one, 0 * one, 0 * one, torch.full((2,), math.radians(degrees)), one)
    ours = augment.warp(x, m, 20)
    ref = TF.rotate(x, degrees, interpolation=BILINEAR)  # counter-clockwise, zeros outside
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("top", "left", "height", "width", "size"), [(3, 2, 12, 15, 16), (1, 1, 18, 18, 20), (4, 6, 10, 8, 12)])
def test_the_crop_is_torchvisions_resized_crop_inside_the_box(top, left, height, width, size):
    """Equal away from the box's edge; at the edge torchvision's resize of the cut-out repeats its last pixel,
    where the warp reads the image's next one (the crop is a window on the image, not a new image)."""
    x = _images()
    n = 2
    m = augment.theta(torch.full((n,), width / 20), torch.full((n,), height / 20),
                      torch.full((n,), (2 * left + width) / 20 - 1), torch.full((n,), (2 * top + height) / 20 - 1),
                      torch.zeros(n), _ones())  # fmt: skip
    ours = augment.warp(x, m, size)
    ref = TF.resized_crop(x, top, left, height, width, [size, size], interpolation=BILINEAR, antialias=False)
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_the_mirror_is_a_horizontal_flip():
    x, one = _images(), _ones()
    ours = augment.warp(x, augment.theta(one, one, 0 * one, 0 * one, 0 * one, -one), 20)
    torch.testing.assert_close(ours, torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_colour_factors_are_torchvisions_per_image(channels):
    x = _images(channels)
    b, c, s = torch.tensor([0.85, 1.15]), torch.tensor([1.1, 0.82]), torch.tensor([0.9, 1.2])
    ours = augment.jitter(x.clone(), b, c, s)
    ref = []
    for i in range(2):
        img = TF.adjust_contrast(TF.adjust_brightness(x[i], float(b[i])), float(c[i]))
        ref.append(TF.adjust_saturation(img, float(s[i])) if channels == 3 else img)
    torch.testing.assert_close(ours, torch.stack(ref), atol=1e-6, rtol=0)


def test_with_nothing_drawn_the_batch_is_only_normalised():
    """No crop, turn, mirror or jitter: the augmentation is the validation's scaling."""
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    tf = augment.augmenter(16, 3, rotation=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.0, contrast=0.0,
                           saturation=0.0)  # fmt: skip
    torch.testing.assert_close(tf(x), augment.normalise(x), atol=1e-5, rtol=0)


def test_the_draws_stay_in_their_ranges():
    """A bright square in the middle of a dark image: every crop keeps at least 80 % of the area, so the
    square's centre pixel is never cut off, and the jitter keeps the output in [-1, 1]."""
    x = torch.zeros(256, 1, 32, 32, dtype=torch.uint8)
    x[..., 12:20, 12:20] = 255
    torch.manual_seed(0)
    out = augment.augmenter(32, 1, flip=True)(x)
    assert out.min() >= -1 and out.max() <= 1
    assert (out[..., 14:18, 14:18].amax(dim=(1, 2, 3)) > 0).all()
    assert len(torch.unique(out.flatten(1), dim=0)) == 256  # each image drew its own


def test_a_batch_of_one_image_and_a_non_square_image_are_augmented():
    """Odd sizes: one image, and a stored image wider than tall (resampled to the training square)."""
    torch.manual_seed(1)
    one = augment.augmenter(16, 3, flip=True)(torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8))
    wide = augment.augmenter(16, 1)(torch.randint(0, 256, (2, 1, 12, 20), dtype=torch.uint8))
    assert one.shape == (1, 3, 16, 16) and wide.shape == (2, 1, 16, 16)
    assert all(t.min() >= -1 and t.max() <= 1 and torch.isfinite(t).all() for t in (one, wide))


def _operator_calls(n: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    tf = augment.augmenter(32, 3, flip=True)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tf(x)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def test_a_batch_costs_the_same_operator_calls_whatever_its_size():
    """Whole-batch operations only: nothing runs image by image (on a GPU every call is a kernel launch)."""
    assert _operator_calls(8) == _operator_calls(128)
