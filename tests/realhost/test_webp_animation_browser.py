"""The pruner's animated WEBP (frames encoded in parallel, muxed by ``lipar.preview.webp_animation``)
plays in a real Chromium: an <img> of a red, green, blue animation shows each colour in turn.

Needs the ``playwright`` package and Debian's chromium (as test_browser_frontend.py); no ComfyUI.
"""
from __future__ import annotations

import base64
import io
import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from lipar.preview import webp_animation  # noqa: E402
from test_browser_frontend import FLAGS, chromium_path  # noqa: E402

COLOURS = ((230, 20, 20), (20, 230, 20), (20, 20, 230))
FRAME_MS = 700


def _nearest(rgb) -> int:
    return int(np.argmin([sum((a - b) ** 2 for a, b in zip(rgb, c)) for c in COLOURS]))


def test_muxed_webp_animation_plays_in_chromium():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium (or set LIPAR_CHROMIUM)")
    from PIL import Image

    pixels = np.stack([np.full((48, 64, 3), c, dtype=np.uint8) for c in COLOURS])
    data = base64.b64encode(webp_animation(pixels, fps=1000 / FRAME_MS, effort=0, threads=3)).decode()
    seen = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 200, "height": 120})
            page.set_content(f'<body style="margin:0"><img id="a" src="data:image/webp;base64,{data}"></body>')
            page.wait_for_function("document.getElementById('a').complete && document.getElementById('a').naturalWidth")
            assert page.evaluate("document.getElementById('a').naturalWidth") == 64
            start = time.monotonic()
            while time.monotonic() - start < 3.2 * FRAME_MS / 1000:
                shot = Image.open(io.BytesIO(page.screenshot(clip={"x": 0, "y": 0, "width": 64, "height": 48})))
                seen.append(_nearest(shot.convert("RGB").getpixel((32, 24))))
                time.sleep(0.08)
        finally:
            browser.close()
    order = [c for i, c in enumerate(seen) if i == 0 or c != seen[i - 1]]     # the colours in the order shown
    assert set(order) == {0, 1, 2}, seen
    assert all((b - a) % 3 == 1 for a, b in zip(order, order[1:])), seen   # red -> green -> blue -> red
