"""The post-mortem report renders in a real browser: headless Chromium (Debian's ``chromium``)
takes a screenshot of the HTML file, and the screenshot is not blank."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from test_replay_api import A, build_session

from tradestate import replay
from tradestate.adapters.store import open_store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if shutil.os.path.exists("/usr/bin/chromium") else None)


def _pixel_stats(path) -> tuple[float, int]:
    from PIL import Image, ImageStat

    image = Image.open(path).convert("L")
    stat = ImageStat.Stat(image)
    return stat.var[0], sum(1 for count in image.histogram() if count)


def test_report_is_self_contained_and_renders_in_headless_chromium(sqlite_url, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    session = build_session(sqlite_url)
    with open_store(sqlite_url, create=False) as store:
        path = replay.write_report(store, session.mid, "30m", str(tmp_path / "postmortem.html"), account=A)
    html = open(path, encoding="utf-8").read()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    assert "kill switch engaged" in html and "OrderFilled" in html
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,1600", f"file://{path}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert shot.exists(), proc.stderr[-2000:]
    variance, colours = _pixel_stats(shot)
    assert variance > 100 and colours > 20, (variance, colours)  # a blank page is one colour


def test_a_blank_page_fails_the_check(tmp_path):
    """The check above can fail: a white screenshot has no variance."""
    from PIL import Image

    Image.new("RGB", (200, 100), "white").save(tmp_path / "blank.png")
    variance, colours = _pixel_stats(tmp_path / "blank.png")
    assert variance == 0 and colours == 1
