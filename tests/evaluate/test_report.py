import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from butd.evaluate.report import ReportConfig, ReportItem, write_report

BOXES = np.array([[30, 50, 130, 150], [200, 10, 290, 60]], np.float32)


@pytest.fixture
def photo(tmp_path):
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[50:150, 30:130] = (220, 30, 30)
    path = tmp_path / "img.jpg"
    Image.fromarray(arr).save(path)
    return path


def _caption_items(photo):
    return [
        ReportItem("1", photo, (("caption", "a red square"), ("reference", "a red box")),
                   attention=(("a", np.array([0.5, 0.5])), ("red", np.array([0.9, 0.1]))), boxes=BOXES,
                   box_labels=("red square", "black sky")),
        ReportItem("2", photo, (("caption", "red"),), attention=(("red", np.arange(49.0)),), grid=(7, 7)),
    ]


def _vqa_items(photo):
    return [
        ReportItem("q1", photo, (("question", "what color is the square?"),),
                   attention=(("Q: what color is the square?\nA: red (0.91)", np.array([0.9, 0.1])),), boxes=BOXES,
                   answers=(("red", 0.91), ("orange", 0.05), ("pink", 0.02), ("blue", 0.01), ("white", 0.004)),
                   truth=("red",) * 8 + ("dark red",) * 2, answer_type="other"),
        ReportItem("q2", photo, (("question", "is there a circle?"),),
                   attention=(("Q: is there a circle?\nA: yes (0.70)", np.array([0.2, 0.8])),), boxes=BOXES,
                   answers=(("yes", 0.7), ("no", 0.3)), truth=("no",) * 9 + ("yes",), answer_type="yes/no"),
        ReportItem("q3", photo, (("question", "how many squares?"),),
                   attention=(("Q: how many squares?\nA: 2 (0.50)", np.array([0.5, 0.5])),), boxes=BOXES,
                   answers=(("2", 0.5), ("1", 0.4)), truth=("1",) * 5 + ("2",) * 2 + ("3",) * 3, answer_type="number"),
    ]


def _images(page):
    return re.findall(r'<img alt="([^"]*)" src="([^"]*)"', page)


def test_embedded_report_is_one_file(tmp_path, photo):
    out = write_report(_caption_items(photo), tmp_path / "reports" / "report.html")  # folder made as needed
    page = out.read_text()
    imgs = _images(page)
    assert len(imgs) == 5  # per image: the photo, then one picture per word
    assert all(src.startswith("data:image/webp;base64,") for _, src in imgs)
    assert [alt for alt, _ in imgs] == ["image", "a", "red", "image", "red"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no picture files beside it
    assert "a red square" in page and "<p>2 images</p>" in page
    with Image.open(io.BytesIO(base64.b64decode(imgs[1][1].split(",", 1)[1]))) as pic:
        assert pic.format == "WEBP" and pic.width == 224  # a word picture: frame_side wide


def test_linked_report_references_its_files_and_embeds_nothing(tmp_path, photo):
    cfg = ReportConfig(embed=False, image_format="png")
    out = write_report(_caption_items(photo), tmp_path / "report.html", cfg=cfg)
    page = out.read_text()
    assert "data:image" not in page
    srcs = [src for _, src in _images(page)]
    files = sorted(p.name for p in (tmp_path / "report_files").iterdir())
    assert sorted(s.split("/", 1)[1] for s in srcs) == files and len(files) == 5
    assert all(s.startswith("report_files/") and s.endswith(".png") for s in srcs)
    write_report(_caption_items(photo)[:1], out, cfg=cfg)  # a rewrite leaves no stale pictures
    assert len(list((tmp_path / "report_files").iterdir())) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_report_leaves_nothing(tmp_path, photo):
    bad = ReportItem("3", tmp_path / "missing.jpg", (("caption", "x"),))
    for embed in (True, False):
        with pytest.raises(OSError):
            write_report([*_caption_items(photo), bad], tmp_path / "r.html", cfg=ReportConfig(embed=embed))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["img.jpg"]
    with pytest.raises(ValueError, match="image_format"):
        write_report(_caption_items(photo), tmp_path / "r.html", cfg=ReportConfig(image_format="gif"))


def test_vqa_report_scores_answers_and_counts_questions(tmp_path, photo):
    page = write_report(_vqa_items(photo), tmp_path / "vqa.html").read_text()
    assert "3 questions on 1 image" in page and "images" not in page.split("<section")[0]
    # official accuracy: red 8 of 10 -> 1.0; yes 1 of 10 -> 0.3; 2 given by 2 of 10 -> 0.6
    assert re.search(r"<h2>q1 <span class=\"right\">\u2713</span></h2>", page)
    assert re.search(r"<h2>q2 <span class=\"partly\">\u2248</span></h2>", page)
    assert "<td>orange</td><td>0.050</td><td class=\"wrong\">\u2717 0.0</td>" in page  # every top answer scored
    assert page.count("<tr><td>") == 5 + 2 + 2 + 3  # top-5 / top-2 rows, then one row per answer type
    assert "red \u00d78, dark red \u00d72" in page  # the human answers with their counts
    assert "<td>other</td><td>1</td><td>100.0</td>" in page
    assert "<td>yes/no</td><td>1</td><td>30.0</td>" in page
    assert "<td>number</td><td>1</td><td>60.0</td>" in page
    assert "accuracy 63.3 on the 3 with human answers" in page


def _photos():
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def test_twelve_photo_report_stays_under_two_megabytes(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, arr in enumerate(_photos()):
        paths.append(tmp_path / f"photo{i}.jpg")
        Image.fromarray(arr).save(paths[-1], quality=90)
    words = "a man in a space suit holding a helmet next to a flag on a pole".split()  # 16: the longest
    items = []
    for i in range(12):
        path = paths[i % len(paths)]
        w, h = Image.open(path).size
        if i % 2:  # SAT-like 14x14 grid
            att = tuple((word, rng.dirichlet(np.full(196, 0.3))) for word in words)
            items.append(ReportItem(str(i), path, (("caption", " ".join(words)),), att, grid=(14, 14)))
        else:  # 36 detector boxes
            xy = rng.uniform(0, 0.7, (36, 2)) * (w, h)
            boxes = np.concatenate([xy, xy + rng.uniform(20, 0.3 * min(w, h), (36, 2))], 1)
            att = tuple((word, rng.dirichlet(np.full(36, 0.3))) for word in words)
            items.append(ReportItem(str(i), path, (("caption", " ".join(words)),), att, boxes=boxes,
                                    box_labels=tuple(f"white object {j}" for j in range(36))))
    out = write_report(items, tmp_path / "report.html")
    assert len(_images(out.read_text())) == 12 * (1 + len(words))
    assert out.stat().st_size < 2 * 2**20, out.stat().st_size
    linked = write_report(items, tmp_path / "linked.html", cfg=ReportConfig(embed=False))
    total = linked.stat().st_size + sum(p.stat().st_size for p in (tmp_path / "linked_files").iterdir())
    assert total < 2 * 2**20, total


def _chromium(tmp_path, url, *extra):
    if not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (.ci/run installs Debian's chromium)")
        pytest.skip("Debian chromium is not installed: apt-get install chromium")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("embed", [True, False])
def test_report_renders_its_images_in_headless_chromium(tmp_path, photo, embed):
    items = _caption_items(photo) + _vqa_items(photo)
    out = write_report(items, tmp_path / "report.html", cfg=ReportConfig(embed=embed))
    dom = _chromium(tmp_path, out.as_uri(), "--dump-dom")
    total = re.search(r'data-images-total="(\d+)"', dom)
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    assert total and ok, dom[:500]
    assert int(total.group(1)) == 5 + 3 * 2 and int(ok.group(1)) == 5 + 3 * 2  # every picture decoded
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, out.as_uri(), "--window-size=1200,900", f"--screenshot={shot}")
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.int64)
    # the page shows colour: the heat maps' red and blue, not only text on white
    assert ((arr[..., 0] - arr[..., 2]) > 80).sum() > 500 and ((arr[..., 2] - arr[..., 0]) > 80).sum() > 500
