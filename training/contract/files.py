"""Image files from manifests and gold tables: paths resolved under an image root and never
outside it (``safe_join``), and pixels brought to 8 bits the same way everywhere (``as_mode``).

The Spark side's probe and embedding, the Ray side's decoder and the run report all call
these. The module imports nothing but the standard library (NumPy and Pillow only inside
``as_mode``), so ``jobs/`` may import it without pulling in Ray or torch.
"""

from __future__ import annotations

import functools
import os


class UnsafePath(ValueError):
    """A manifest path that must not be opened; ``reason`` is the short name quarantine uses."""

    def __init__(self, reason: str, path: object, root: str):
        self.reason = reason
        words = {"no_path": "is empty", "path_invalid": "is not a valid file path (e.g. a NUL byte)",
                 "path_escape": f"leads outside the image root {root}"}  # fmt: skip
        super().__init__(f"image path {path!r} {words[reason]}")


@functools.lru_cache(maxsize=64)
def real_root(root: str) -> str:
    return os.path.realpath(root)


def safe_join(root: str, relative: object) -> str:
    """The real path of ``relative`` under ``root``, or ``UnsafePath`` with its reason.

    Refused: an empty or non-string value (``no_path``); a value ``os.path`` cannot take,
    such as one with a NUL byte (``path_invalid``); an absolute path, or one whose ``..``
    parts or symlinks lead outside the root (``path_escape``). A ``..`` that stays inside
    the root (``a/../b.png``) resolves normally.
    """
    root = real_root(root)
    if not isinstance(relative, str) or not relative:
        raise UnsafePath("no_path", relative, root)
    if "\x00" in relative:
        raise UnsafePath("path_invalid", relative, root)
    if os.path.isabs(relative):
        raise UnsafePath("path_escape", relative, root)
    try:
        real = os.path.realpath(os.path.join(root, relative))
        inside = os.path.commonpath([root, real]) == root
    except (ValueError, OSError) as exc:  # undecodable surrogates, names too long for the OS
        raise UnsafePath("path_invalid", relative, root) from exc
    if not inside:
        raise UnsafePath("path_escape", relative, root)
    return real


WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def as_mode(img, mode: str):
    """``img`` converted to ``mode`` (``L`` or ``RGB``), 16-bit and float images scaled to 8 bits first.

    Pillow's own conversion of a 16-bit image clips every value above 255, which turns most
    16-bit photographs white (and makes distinct ones near duplicates of each other).
    """
    from PIL import Image

    if img.mode in WIDE_MODES:
        import numpy as np

        top = WIDE_MODES[img.mode]
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = max(float(pixels.max(initial=0.0)), 1e-12)
        img = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    return img if img.mode == mode else img.convert(mode)
