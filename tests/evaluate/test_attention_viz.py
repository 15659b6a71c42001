import numpy as np
import pytest
from PIL import Image

from butd.evaluate.attention_viz import (
    VizConfig,
    answer_figure,
    attention_figure,
    colorize,
    colormap_lut,
    font,
    heat_field,
    top_regions,
)
from butd.evaluate.region_names import RegionNames, box_labels, find_names, read_vocab

GRAY = 128
CFG = VizConfig()


def _decode_heat(pixels: np.ndarray, cfg: VizConfig = CFG) -> np.ndarray:
    """Invert `colorize` over a uniform gray image: the colour-map position (0..1) of each pixel."""
    lut = colormap_lut(cfg.cmap).astype(np.float64)
    h = np.linspace(0, 1, 256)
    alpha = (cfg.alpha_low + (cfg.alpha_high - cfg.alpha_low) * h)[:, None]
    expected = GRAY * (1 - alpha) + lut * alpha  # [256, 3]
    flat = pixels.reshape(-1, 3).astype(np.float64)
    best = ((flat[:, None, :] - expected[None]) ** 2).sum(-1).argmin(1)
    return (best / 255.0).reshape(pixels.shape[:-1])


def _gray(w=300, h=200):
    return Image.fromarray(np.full((h, w, 3), GRAY, np.uint8))


BOXES = np.array([[30, 50, 130, 150], [200, 10, 290, 60], [0, 0, 300, 200]], np.float32)


def test_region_field_sums_the_boxes_covering_each_pixel():
    field = heat_field(np.array([0.5, 0.2, 0.3]), (300, 200), boxes=BOXES)
    assert field[100, 80] == pytest.approx(0.8)  # top box + whole-image box
    assert field[30, 250] == pytest.approx(0.5)
    assert field[180, 250] == pytest.approx(0.3)
    half = heat_field(np.array([0.5, 0.2, 0.3]), (150, 100), boxes=BOXES, scale=0.5)
    assert half[50, 40] == pytest.approx(0.8) and half[90, 125] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="one box per weight"):
        heat_field(np.ones(2), (300, 200), boxes=BOXES)


def test_heat_map_is_hottest_inside_the_highest_weight_box():
    w = np.array([0.6, 0.1, 0.3])
    fig = attention_figure(_gray(), w, boxes=BOXES, cfg=VizConfig(top_k=0))  # no outlines over the test pixels
    pic = np.asarray(fig)[:200]  # the image part; the colour bar follows
    inside = _decode_heat(pic[60:140:3, 40:120:3])
    assert inside.min() > 0.95  # the top box is at the hot end of the scale
    assert _decode_heat(pic[150:200:3, 150:200:3]).max() < 0.05  # only the whole-image box: the cold end
    assert 0.05 < _decode_heat(pic[30:31, 250:251]).item() < inside.min()  # the small box: in between
    top = pic[100, 80].astype(int)
    assert top[0] > top[2] + 60  # hot is red in turbo, cold is blue
    cold = pic[190, 190].astype(int)
    assert cold[2] > cold[0]


def test_grid_attention_is_upsampled_smoothly_and_peaks_at_the_attended_cell():
    w = np.zeros(49)
    w[7 * 2 + 5] = 1.0  # row 2, column 5 of a 7x7 grid
    field = heat_field(w, (140, 140), grid=(7, 7))
    y, x = np.unravel_index(field.argmax(), field.shape)
    assert 40 <= y < 60 and 100 <= x < 120  # inside the cell's 20x20 pixels
    assert field.min() >= 0.0 and field.max() <= 1.0  # the bicubic overshoot is clipped
    steps = np.abs(np.diff(field, axis=1)).max()
    assert steps < 0.25  # smooth: a nearest-neighbour upsampling would jump by the full range (1.0)
    hot, cold = _decode_heat(np.asarray(colorize(_gray(140, 140), field)[0])[[50, 130], [110, 10]])
    assert hot > 0.95 and cold < 0.05
    with pytest.raises(ValueError, match="7x7 grid"):
        heat_field(np.ones(48), (140, 140), grid=(7, 7))


def test_word_and_colour_bar_are_drawn():
    w = np.arange(49.0)
    plain = attention_figure(_gray(140, 140), w, grid=(7, 7))
    titled = attention_figure(_gray(140, 140), w, grid=(7, 7), title=[("giraffe", True)])
    other = attention_figure(_gray(140, 140), w, grid=(7, 7), title=[("cat", True)])
    band = titled.height - plain.height
    assert band > 10  # a title band above the picture
    text = np.asarray(titled)[:band]
    assert (text.min(axis=2) < 100).sum() > 30  # dark glyphs on the white band
    assert not np.array_equal(text, np.asarray(other)[:band])  # the word itself is drawn, not a fixed mark
    bar_row = np.asarray(plain)[140 + 5]  # first rows under the picture: the colour bar strip
    lut = colormap_lut("turbo").astype(int)
    assert np.array_equal(bar_row[4], lut[0])  # the strip runs from the coldest colour ...
    assert np.array_equal(bar_row[135], lut[255])  # ... to the hottest
    bar_text = np.asarray(plain)[140 + 12:]
    assert (bar_text.min(axis=2) < 100).sum() > 20  # the scale's numbers are printed


def test_top_boxes_are_labelled_with_weight_and_name():
    w = np.array([0.6, 0.1, 0.3])
    names = ("brown dog", "red kite", "grass")
    labelled = np.asarray(attention_figure(_gray(), w, boxes=BOXES, box_labels=names, cfg=VizConfig(top_k=2)))
    bare = np.asarray(attention_figure(_gray(), w, boxes=BOXES, cfg=VizConfig(top_k=2)))
    tag = labelled[50:66, 30:130]  # the tag sits at the top-left corner of the top box
    assert (tag.max(axis=2) > 230).sum() > 20 and (tag.max(axis=2) < 40).sum() > 100  # white text on black
    assert not np.array_equal(tag, bare[50:66, 30:130])  # the name adds text
    assert top_regions(w, 2) == [0, 2]
    # box 1 (weight 0.1) is not among the top 2: its corner stays untouched by outlines and tags
    assert np.array_equal(labelled[12:20, 202:230], bare[12:20, 202:230])
    legend = attention_figure(_gray(), w, boxes=BOXES, box_labels=names, legend=True, cfg=VizConfig(top_k=2))
    assert legend.height > labelled.shape[0]  # one legend line per labelled box


def test_answer_figure_prints_question_answer_and_scores():
    img = Image.fromarray(np.full((400, 800, 3), GRAY, np.uint8))
    w = np.array([0.6, 0.1, 0.3])
    one = answer_figure(img, "what is on the grass?", ["dog"], [0.91], w, boxes=BOXES * 2)
    three = answer_figure(img, "what is on the grass?", ["dog", "cat", "cow"], [0.91, 0.05, 0.01], w,
                          boxes=BOXES * 2)
    assert one.width == 640  # shrunk to the default long side
    assert three.height > one.height  # the runners-up get their own line
    text = np.asarray(one)[:30]
    assert (text.min(axis=2) < 100).sum() > 50
    grid = answer_figure(img, "what?", ["dog"], [0.5], np.arange(196.0), grid=(14, 14))
    assert grid.width == 640
    small = answer_figure(_gray(150, 100), "what?", ["dog"], [0.5], w, boxes=BOXES / 2)
    assert small.width == 480  # enlarged so the text has room
    arr = np.asarray(answer_figure(_gray(150, 100), "what?", ["dog"], [0.5], w, boxes=BOXES / 2,
                                   cfg=VizConfig(top_k=0)))
    top = int(np.argmax((arr[:, 240] != 255).any(axis=1)))  # first row below the white title band
    hot, cold = _decode_heat(arr[[top + 160, top + 300], [128, 400]])
    assert hot > 0.95 and cold < 0.05  # the boxes follow the enlargement (x3.2)


def test_font_ships_with_matplotlib():
    f = font(14)
    assert f.path.endswith("DejaVuSans.ttf") and f.getlength("dog") > 10


def test_vocab_lines_take_the_first_synonym(tmp_path):
    (tmp_path / "objects_vocab.txt").write_text("Dog\nstop sign,stopsign\nkite\n")
    (tmp_path / "attributes_vocab.txt").write_text("brown\nred\n")
    assert read_vocab(tmp_path / "objects_vocab.txt") == ("dog", "stop sign", "kite")
    names = find_names(None, names_dir=tmp_path)
    rec = {"boxes": np.zeros((3, 4)), "objects_id": np.array([0, 1, 2]), "attrs_id": np.array([0, 1, 0]),
           "attrs_conf": np.array([0.8, 0.05, 0.3], np.float32)}
    # the second attribute is below bottom-up-attention's 0.1 display threshold
    assert box_labels(rec, names) == ("brown dog", "stop sign", "brown kite")
    assert box_labels(rec, None) == ("obj 0 attr 0", "obj 1", "obj 2 attr 0")
    assert box_labels(rec, names, k=2) == ("brown dog", "stop sign")
    assert box_labels({"boxes": np.zeros((2, 4))}, names) == ("", "")
    with pytest.raises(ValueError, match="objects_vocab.txt"):
        find_names(None, names_dir=tmp_path / "nowhere")


def test_names_come_from_the_manifest_then_the_store_directory(tmp_path):
    manifest = {"labels": {"objects": ["dog", "cat"], "attributes": ["brown"]}}
    assert find_names(tmp_path, manifest) == RegionNames(("dog", "cat"), ("brown",))
    assert find_names(tmp_path, {}) is None
    (tmp_path / "objects_vocab.txt").write_text("person\n")
    assert find_names(tmp_path, {}) == RegionNames(("person",), ())
