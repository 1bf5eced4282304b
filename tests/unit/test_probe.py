"""The image probe on crafted files: every defect becomes facts, never an exception."""

import io
import os

import pytest
from PIL import Image

from jobs.probe import phash, probe_file
from jobs.samples import _bomb_png


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
     ("", "no_path", False), (None, "no_path", False)],
)  # fmt: skip
def test_defects_become_facts(root, path, error, inside):
    facts = probe_file(root, path)
    assert facts["image_error"].startswith(error)
    assert facts["image_inside_root"] is inside
    assert not facts["image_decodable"]


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
