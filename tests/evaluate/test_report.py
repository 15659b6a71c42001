import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from butd.evaluate.report import ReportItem, render_attention, write_report


@pytest.fixture
def photo(tmp_path):
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[50:150, 30:130] = (220, 30, 30)
    path = tmp_path / "img.jpg"
    Image.fromarray(arr).save(path)
    return path


def test_region_attention_brightens_the_attended_box(photo):
    img = Image.open(photo).convert("RGB")
    boxes = np.array([[30, 50, 130, 150], [200, 10, 290, 60]], np.float32)
    out = np.asarray(render_attention(img, np.array([0.9, 0.1]), boxes=boxes), dtype=float)
    src = np.asarray(img, dtype=float)
    assert out[100, 80].sum() == pytest.approx(src[100, 80].sum(), rel=0.05)  # attended: kept
    assert out[100, 80, 0] > 150
    weak = out[30:50, 230:280].mean() / max(src[30:50, 230:280].mean(), 1)
    assert weak < 0.5 or src[30:50, 230:280].mean() == 0


def test_grid_attention_follows_the_weights(tmp_path):
    img = Image.fromarray(np.full((140, 140, 3), 200, np.uint8))
    w = np.zeros(49)
    w[0] = 1.0  # top-left cell of a 7x7 grid
    out = np.asarray(render_attention(img, w, grid=(7, 7)), dtype=float)
    assert out[5, 5].mean() > 150 and out[130, 130].mean() < 80
    with pytest.raises(ValueError):
        render_attention(img, np.ones(48), grid=(7, 7))


def _items(photo):
    boxes = np.array([[30, 50, 130, 150], [200, 10, 290, 60]], np.float32)
    return [
        ReportItem("1", photo, (("caption", "a red square"), ("reference", "a red box")),
                   attention=(("a", np.array([0.5, 0.5])), ("red", np.array([0.9, 0.1]))), boxes=boxes),
        ReportItem("2", photo, (("question", "what color?"), ("answer", "red")),
                   attention=(("red", np.arange(49.0)),), grid=(7, 7)),
    ]


def test_report_is_self_contained_and_writes_pngs(tmp_path, photo):
    out = write_report(_items(photo), tmp_path / "report.html")
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 5 and "src=\"http" not in page
    assert "a red square" in page and "what color?" in page
    assert len(list((tmp_path / "report_png").glob("*.png"))) == 5


def test_report_renders_its_images_in_headless_chromium(tmp_path, photo):
    if not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (.ci/run installs Debian's chromium)")
        pytest.skip("Debian chromium is not installed: apt-get install chromium")
    out = write_report(_items(photo), tmp_path / "report.html")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", out.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    assert total and ok, dom[:500]
    assert int(total.group(1)) == 5 and int(ok.group(1)) == 5
