"""The image probe on crafted files: every defect becomes facts, never an exception."""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from jobs.samples import _bomb_png
from jobs.validation.probe import phash, probe_file
from training.contract import UnsafePath, safe_join


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    img = Image.new("L", (20, 10), 128)
    img.save(images / "ok.png")
    img.convert("RGB").save(images / "lies.png", format="JPEG")
    (images / "trunc.png").write_bytes((images / "ok.png").read_bytes()[:40])
    (images / "bomb.png").write_bytes(_bomb_png(14_000))
    (tmp_path / "secret.png").write_bytes((images / "ok.png").read_bytes())
    os.symlink(tmp_path / "secret.png", images / "link.png")
    return os.path.realpath(images)


def test_good_image_facts(root):
    facts = probe_file(root, "ok.png")
    assert facts["image_exists"] and facts["image_inside_root"] and facts["image_decodable"]
    assert (facts["image_format"], facts["image_width"], facts["image_height"], facts["image_channels"]) == (
        "PNG",
        20,
        10,
        1,
    )
    assert facts["image_ext_matches"] and len(facts["image_sha256"]) == 64 and len(facts["image_phash"]) == 16
    assert facts["image_error"] is None


@pytest.mark.parametrize(
    ("path", "error", "inside"),
    [("../secret.png", "path_escape", False), ("/etc/hosts", "path_escape", False), ("link.png", "path_escape", False),
     ("nope.png", "missing", True), ("trunc.png", "undecodable", True), ("bomb.png", "decompression_bomb", True),
     ("", "no_path", False), (None, "no_path", False), ("ok\x00.png", "path_invalid", False),
     ("sub", "is_a_folder", True), ("sub/../../secret.png", "path_escape", False)],
)  # fmt: skip
def test_defects_become_facts(root, path, error, inside):
    (Path(root) / "sub").mkdir()
    facts = probe_file(root, path)
    assert facts["image_error"].startswith(error)
    assert facts["image_inside_root"] is inside
    assert not facts["image_decodable"]
    assert facts["image_path_valid"] is (error != "path_invalid")


def test_a_dotdot_that_stays_inside_the_root_resolves(root):
    (Path(root) / "sub").mkdir()
    assert probe_file(root, "sub/../ok.png")["image_decodable"]
    assert safe_join(root, "sub/../ok.png") == os.path.join(root, "ok.png")


@pytest.mark.parametrize(("path", "reason"), [("a\x00b.png", "path_invalid"), ("/etc/hosts", "path_escape"),
                                              ("../x.png", "path_escape"), ("", "no_path"), (3, "no_path")])  # fmt: skip
def test_safe_join_names_the_reason(root, path, reason):
    with pytest.raises(UnsafePath) as err:
        safe_join(root, path)
    assert err.value.reason == reason and isinstance(err.value, ValueError)


def test_extension_that_lies_is_flagged(root):
    facts = probe_file(root, "lies.png")
    assert facts["image_decodable"] and facts["image_format"] == "JPEG" and facts["image_ext_matches"] is False


def test_phash_survives_small_changes_and_separates_different_images():
    from sklearn.datasets import load_digits

    from jobs.samples import _digit_png

    digits = load_digits()
    a = _digit_png(digits.images[0])
    shifted = a.transform(a.size, Image.Transform.AFFINE, (1, 0, -1, 0, 1, -1))
    bright = Image.eval(a, lambda v: min(255, int(v * 1.15)))
    jpeg = Image.open(io.BytesIO((lambda b: (a.save(b, format="JPEG", quality=85), b.getvalue())[1])(io.BytesIO())))
    other = _digit_png(digits.images[1])
    dist = lambda x, y: bin(int(phash(x), 16) ^ int(phash(y), 16)).count("1")  # noqa: E731
    assert max(dist(a, bright), dist(a, jpeg)) <= 6
    assert dist(a, other) > 12
    assert dist(a, shifted) < dist(a, other)


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    """Pillow's own conversion clips 16-bit values at 255 (most of the image turns white): scale instead."""
    import numpy as np

    from training.contract import as_mode

    values = np.random.default_rng(0).integers(0, 65535, (16, 16), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert np.asarray(img.convert("L")).mean() > 250  # what Pillow alone gives
        eight = np.asarray(as_mode(img, "L"), dtype=np.float64)
    assert np.abs(eight - values / 257.0).max() <= 1.0
    other = np.random.default_rng(1).integers(0, 65535, (16, 16), dtype=np.uint16)
    Image.fromarray(other).save(tmp_path / "other.png")
    hashes = [probe_file(str(tmp_path), name)["image_phash"] for name in ("deep.png", "other.png")]
    assert bin(int(hashes[0], 16) ^ int(hashes[1], 16)).count("1") > 12  # distinct images, distinct hashes
