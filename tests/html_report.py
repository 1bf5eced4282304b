"""Checks of a run report page: parsed with the standard library's HTML parser, rendered by a headless
Chromium where one is installed."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (alt, src)
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2" and attrs.get("id"):
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs.get("src", "")))
        if tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def decode(src: str) -> Image.Image:
    """An embedded image (the page must be self-contained: data URIs only)."""
    assert src.startswith("data:image/png;base64,"), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    return image


def render(path: Path, out: Path) -> Path | None:
    """Screenshot the page with headless Chromium (None when none is installed)."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        return None
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={out}",
                    "--window-size=1200,3000", path.resolve().as_uri()], check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    return out
