"""Image probe: one distributed pass that opens each file once and records facts as columns.

Paths resolve under the image root; absolute paths, ``..`` and symlinks leading outside
it are never opened. Broken, truncated, mislabelled and oversized files (decompression
bombs: Pillow's pixel limit is enforced, and its warning is treated as an error) become
column values, never a crash. The perceptual hash is the DCT hash of Zauner (2010),
"Implementation and Benchmarking of Perceptual Image Hash Functions", as in imagehash:
32x32 grayscale, 2-D DCT, the top-left 8x8 block against its median, 64 bits.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from jobs.errors import ConfigError
from training.contract import UnsafePath, as_mode, safe_join

PROBE_FIELDS = [
    ("image_path_valid", T.BooleanType()), ("image_exists", T.BooleanType()), ("image_inside_root", T.BooleanType()),
    ("image_decodable", T.BooleanType()), ("image_ext_matches", T.BooleanType()),
    ("image_format", T.StringType()), ("image_width", T.IntegerType()), ("image_height", T.IntegerType()),
    ("image_channels", T.IntegerType()), ("image_bytes", T.LongType()), ("image_sha256", T.StringType()),
    ("image_phash", T.StringType()), ("image_error", T.StringType()),
]  # fmt: skip
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF",
              ".tiff": "TIFF", ".webp": "WEBP"}  # fmt: skip
MAX_FILE_BYTES = 64 * 1024 * 1024
THUMB_FIELD = ("image_thumb", T.BinaryType())


THUMB = 32  # the side of the grayscale thumbnail behind the pHash and near-duplicate verification


def thumbnail(img) -> np.ndarray:
    """The image as THUMB x THUMB grayscale (Lanczos), uint8: the pixels the pHash and the NCC check read."""
    from PIL import Image

    return np.asarray(as_mode(img, "L").resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.uint8)


def phash(img, pixels: np.ndarray | None = None) -> str:
    """64-bit DCT perceptual hash as 16 hex digits (of ``pixels``, the image's thumbnail, when given)."""
    from scipy.fft import dctn

    pixels = thumbnail(img) if pixels is None else pixels
    low = dctn(pixels.astype(np.float64), norm="ortho")[:8, :8]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def probe_file(root: str, rel: str | None, thumbnails: bool = False) -> dict:
    """Facts about one manifest path under ``root`` (see ``training.contract.safe_join``); with ``thumbnails``,
    also ``image_thumb``: the THUMB x THUMB grayscale pixels as bytes (for near-duplicate verification)."""
    from PIL import Image

    facts: dict = {name: None for name, _ in PROBE_FIELDS + ([THUMB_FIELD] if thumbnails else [])}
    try:
        real = safe_join(root, rel)
    except UnsafePath as exc:  # never opened; quarantined by the suite's path expectations
        valid = exc.reason != "path_invalid"
        return {**facts, "image_path_valid": valid, "image_inside_root": False, "image_error": exc.reason}
    facts["image_path_valid"] = True
    if os.path.isdir(real):
        return {**facts, "image_inside_root": True, "image_exists": False, "image_error": "is_a_folder"}
    facts.update(image_inside_root=True, image_exists=os.path.isfile(real), image_decodable=False)
    if not facts["image_exists"]:
        return {**facts, "image_error": "missing"}
    facts["image_bytes"] = os.path.getsize(real)
    if facts["image_bytes"] > MAX_FILE_BYTES:
        return {**facts, "image_error": "too_large"}
    with open(real, "rb") as fh:
        data = fh.read()
    facts["image_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pixels = thumbnail(img)
                facts.update(image_format=img.format, image_width=img.width, image_height=img.height,
                             image_channels=len(img.getbands()), image_phash=phash(img, pixels), image_decodable=True)  # fmt: skip
                if thumbnails:
                    facts["image_thumb"] = pixels.tobytes()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return {**facts, "image_error": "decompression_bomb"}
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        return {**facts, "image_error": f"undecodable: {type(exc).__name__}"}
    expected = EXTENSIONS.get(PurePosixPath(rel).suffix.lower())
    facts["image_ext_matches"] = expected == facts["image_format"]
    return facts


def probe_images(df: DataFrame, path_column: str, root: str, thumbnails: bool = False) -> DataFrame:
    """``df`` plus the probe columns, computed on the executors (root must be visible there); with
    ``thumbnails``, plus ``image_thumb`` (curate's near-duplicate check reads it; never written to a table)."""
    if not os.path.isdir(root):  # every row would be `image_missing`: a wrong root, not missing images
        raise ConfigError(f"the image root {root} is not a folder", fix="set images.root to the folder that holds "
                          "the manifest's relative paths (relative to the YAML file)")  # fmt: skip
    fields = PROBE_FIELDS + ([THUMB_FIELD] if thumbnails else [])
    schema = T.StructType(df.schema.fields + [T.StructField(n, t) for n, t in fields])
    names = [n for n, _ in fields]

    def probe_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            facts = pd.DataFrame([probe_file(root, p, thumbnails) for p in batch[path_column]], columns=names)
            yield pd.concat([batch.reset_index(drop=True), facts.astype(object)], axis=1)

    return df.mapInPandas(probe_batches, schema=schema)


def encode_at(root: str, rel: str, size: int, channels: int) -> bytes:
    """One image resized to ``size`` x ``size`` with ``channels`` channels, as PNG bytes."""
    from PIL import Image

    with Image.open(safe_join(root, rel)) as img:
        img = as_mode(img, "L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, format="PNG")
    return out.getvalue()


def embed_images(df: DataFrame, path_column: str, root: str, size: int, channels: int, into: str = "image") -> DataFrame:
    """``df`` plus ``into``: every image as PNG bytes at the training resolution (executors read the files)."""
    schema = T.StructType(df.schema.fields + [T.StructField(into, T.BinaryType())])

    def encode_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            batch = batch.reset_index(drop=True)
            batch[into] = [encode_at(root, p, size, channels) for p in batch[path_column]]
            yield batch

    return df.mapInPandas(encode_batches, schema=schema)
