"""Issue 12: every silent wrong result and every traceback a new user hit, through the real `butd` command.

Each case asserts one line `Error: <what> (<where>): <what to do>`, the exit code (2 usage, 1 failure)
and that nothing was half-written: the folders involved are byte-for-byte as before, no empty folder left.
One toy world, one toy-oracle store, one effnetlite0 store with random weights (64 px, in-process) and
tiny runs are made once for the module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from butd.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL_VQA = {"model": dict.fromkeys(("word_dim", "hidden_dim", "attention_dim", "joint_dim", "classifier_dim"), 8),
             "loop": {"batch_size": 16, "log_every": 0}}
SMALL_CAPTION = {"model": {"embed_dim": 8, "hidden_dim": 16, "att_dim": 8}, "data": {"min_count": 1},
                 "xe": {"log_every": 0}}


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` (folders included) with a hash of its bytes: equal before and after means
    nothing was written, changed, removed or left behind."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "absent"
            continue
        for p in sorted([root, *root.rglob("*")]):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def butd(*args: object) -> tuple[int, list[str], str]:
    """(exit code, non-empty output lines without the device line, stderr) of `butd ARGS`."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("device:")]
    return r.exit_code, lines, r.stderr


def refused(code: int, *args: object, watch: tuple[Path, ...] = (), has: tuple[str, ...] = ()) -> str:
    """Run `butd ARGS`, which must stop with ``code`` and a single Error line naming ``has``; nothing under
    ``watch`` may change."""
    before = snapshot(*watch)
    got, lines, _ = butd(*args)
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert got == code, lines
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert errors[0].count(" (") >= 1 and "): " in errors[0], errors[0]  # what (where): what to do
    assert "Traceback" not in "\n".join(lines)
    for text in has:
        assert text in errors[0], errors[0]
    assert snapshot(*watch) == before
    return errors[0]


def _vqa_files(toy: Path) -> list[str]:
    v = toy / "vqa"
    return ["--questions", str(v / "v2_OpenEnded_mscoco_train2014_questions.json"),
            "--annotations", str(v / "v2_mscoco_train2014_annotations.json"),
            "--val-questions", str(v / "v2_OpenEnded_mscoco_val2014_questions.json"),
            "--val-annotations", str(v / "v2_mscoco_val2014_annotations.json"), "--min-answer-count", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store
    from butd.extract.registry import build_extractor, extractor_config
    from butd.extract.runner import manifest_entry
    from butd.extract.single import extract_files
    from butd.extract.sources import iter_source
    from butd.shards import ShardWriter

    root = tmp_path_factory.mktemp("safety")
    toy = root / "toy"
    make_toy_world(toy, ToyConfig(n_images=24, seed=3))
    write_oracle_store(toy, root / "oracle", dim=64, seed=0, noise=0.1)
    write_oracle_store(toy, root / "oracle96", dim=96, seed=0, noise=0.1)
    cfg = extractor_config("effnetlite0", image_size=64, device="cpu", weights="random")
    ex = build_extractor("effnetlite0", cfg)
    entry = manifest_entry(dataclasses.asdict(cfg), {"name": "effnetlite0", "details": ex.config_dict(),
                                                     "weights_sha256": ex.weights_sha256})
    items = list(iter_source("toy", toy))
    with ShardWriter(root / "random", "grid", extractor=entry, source={"dataset": "toy", "root": str(toy)}) as w:
        for item, (rec, _) in zip(items, extract_files(entry, [it.path for it in items])):
            w.add(item.image_id, rec)
    (root / "vqa.yaml").write_text(yaml.safe_dump(SMALL_VQA))
    (root / "cap.yaml").write_text(yaml.safe_dump(SMALL_CAPTION))
    for name, store, task in (("vqa", "oracle", "vqa"), ("vqa-random", "random", "vqa"), ("cap", "random", "cap")):
        extra = _vqa_files(toy) if task == "vqa" else ["--captions", str(toy / "dataset_coco.json")]
        code, lines, _ = butd("train", "--model", "vqa" if task == "vqa" else "sat-soft", "--features", root / store,
                              "--out", root / name, "--epochs", "1", "--config", root / f"{task}.yaml", *extra)
        assert code == 0, lines
    return {"root": root, "toy": toy, "oracle": root / "oracle", "oracle96": root / "oracle96",
            "random": root / "random", "vqa": root / "vqa", "vqa_random": root / "vqa-random", "cap": root / "cap"}


def _photo(world) -> Path:
    return sorted((world["toy"] / "val2014").glob("*.jpg"))[0]


# ---------------------------------------------------------------------------- 1. weights are explicit
@pytest.mark.parametrize("extractor", ["bua-r101", "resnet101", "vgg16"])
def test_extractor_without_shipped_weights_needs_weights(world, tmp_path, extractor):
    line = refused(2, "extract", "--dataset", "toy", "--root", world["toy"], "--extractor", extractor,
                   "--out", tmp_path / "store", watch=(tmp_path,), has=(f"{extractor} has no shipped weights",
                                                                         "--weights random"))
    assert ("--weights imagenet" in line) == (extractor != "bua-r101")


def test_random_weights_are_said_in_words_and_training_on_them_warns_once(world, tmp_path):
    code, lines, _ = butd("shards", "info", world["random"])
    assert code == 0 and "weights    random (untrained: the features are meaningless, for tests only)" in lines
    assert json.loads((world["random"] / "manifest.json").read_text())["extractor"]["weights"] == "random"
    code, lines, _ = butd("shards", "info", world["oracle"])
    assert code == 0 and not any(ln.startswith("weights") for ln in lines)  # no weights at all: nothing said
    for store, warned in (("random", 1), ("oracle", 0)):
        code, lines, _ = butd("train", "--model", "vqa", "--features", world[store], "--epochs", "1",
                              "--config", world["root"] / "vqa.yaml", *_vqa_files(world["toy"]),
                              "--out", tmp_path / store)
        assert code == 0 and sum("random weights" in ln for ln in lines) == warned, lines


def test_weights_convert_of_a_photo_is_one_line(world, tmp_path):
    photo = tmp_path / "rocket.jpg"
    shutil.copyfile(_photo(world), photo)
    refused(2, "weights", "convert", photo, tmp_path / "w.safetensors", watch=(tmp_path,),
            has=("not a detector checkpoint", "rocket.jpg"))


def test_imagenet_weights_offline_stop_before_any_worker(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "butd", "extract", "--dataset", "toy", "--root", str(world["toy"]),
                        "--extractor", "resnet101", "--weights", "imagenet", "--out", str(tmp_path / "store")],
                       env=env, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "could not fetch the ImageNet weights of resnet101" in errors[0] and "--weights FILE" in errors[0]
    assert "ray" not in r.stderr.lower() and not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------- 2. runs and stores are protected
def test_eval_on_a_split_the_run_does_not_have(world):
    refused(2, "eval", world["vqa"], "--split", "tset", watch=(world["vqa"],),
            has=("--split tset", "train and val"))
    refused(2, "eval", world["cap"], "--split", "tset", watch=(world["cap"],), has=("--split tset", "test"))


def test_train_into_an_existing_run_needs_resume_or_overwrite(world, tmp_path):
    args = ["train", "--model", "vqa", "--features", world["oracle"], "--epochs", "1",
            "--config", world["root"] / "vqa.yaml", *_vqa_files(world["toy"])]
    refused(2, *args, "--out", world["vqa"], watch=(world["vqa"],), has=("already holds files", "--resume",
                                                                         "--overwrite"))
    refused(2, *args, "--out", tmp_path / "new", "--resume", watch=(tmp_path,), has=("nothing to resume",))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    refused(2, *args, "--out", tmp_path / "mine", "--overwrite", watch=(tmp_path,), has=("not one",))
    shutil.copytree(world["vqa"], tmp_path / "copy")
    code, lines, _ = butd(*args, "--out", tmp_path / "copy", "--overwrite")
    assert code == 0 and (tmp_path / "copy" / "run.json").is_file()


@pytest.mark.parametrize("store,differs", [("random", "kind region -> grid"), ("oracle96", "feature_dim 64 -> 96")])
def test_resume_on_another_store_is_refused(world, tmp_path, store, differs):
    run = tmp_path / "run"
    shutil.copytree(world["vqa"], run)
    refused(2, "train", "--model", "vqa", "--features", world[store], "--out", run, "--resume", "--epochs", "2",
            "--config", world["root"] / "vqa.yaml", *_vqa_files(world["toy"]), watch=(run,),
            has=("trained on another store", differs))


def test_resume_says_where_it_resumes(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["vqa"], run)
    code, lines, _ = butd("train", "--model", "vqa", "--features", world["oracle"], "--out", run, "--resume",
                          "--epochs", "2", "--config", world["root"] / "vqa.yaml", *_vqa_files(world["toy"]))
    assert code == 0 and any(ln.startswith(f"resuming {run} at epoch 2 step ") for ln in lines), lines


def test_finished_store_refuses_other_settings_and_another_extractor(world, tmp_path):
    store = world["random"]
    base = ["extract", "--dataset", "toy", "--root", world["toy"], "--out", store]
    refused(2, *base, "--extractor", "effnetlite0", "--weights", "random", "--image-size", "96",
            watch=(store,), has=("other settings: extractor.config.image_size",))
    refused(2, *base, "--extractor", "effnetlite0", watch=(store,), has=("extractor.config.weights",))
    refused(2, *base, "--extractor", "resnet101", "--weights", "random", watch=(store,),
            has=("made by extractor 'effnetlite0', not 'resnet101'", "--extractor effnetlite0"))
    code, lines, _ = butd(*base, "--extractor", "effnetlite0", "--weights", "random", "--image-size", "64",
                          "--no-verify")
    assert code == 0 and lines[-1].endswith("0 written, 24 already done, 0 failed of 24 images")


def test_extract_into_a_folder_that_is_not_a_store(world, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("x")
    refused(2, "extract", "--dataset", "toy", "--root", world["toy"], "--extractor", "effnetlite0",
            "--out", tmp_path / "out", watch=(tmp_path,), has=("neither empty nor a feature store",))


# ---------------------------------------------------------------------------- 3. the traceback list
def test_wrong_dataset_layout(world, tmp_path):
    refused(2, "extract", "--dataset", "coco", "--root", world["toy"] / "train2014", "--extractor", "effnetlite0",
            "--out", tmp_path / "s", watch=(tmp_path,), has=("no Karpathy split for coco", "--dataset"))
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copyfile(world["toy"] / "dataset_coco.json", fake / "dataset_coco.json")
    refused(2, "extract", "--dataset", "coco", "--root", fake, "--extractor", "effnetlite0",
            "--out", tmp_path / "s", watch=(tmp_path,), has=("none of the 24 images the coco layout lists exists",))


def test_one_id_two_files(world, tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    shutil.copyfile(_photo(world), tmp_path / "imgs" / "x.jpg")
    Image.open(_photo(world)).save(tmp_path / "imgs" / "x.png")
    refused(2, "extract", "--dataset", "folder", "--root", tmp_path / "imgs", "--extractor", "effnetlite0",
            "--out", tmp_path / "s", watch=(tmp_path,), has=("image id 'x' names two files", "x.png"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(world, tmp_path):
    refused(2, "extract", "--dataset", "toy", "--root", world["toy"], "--extractor", "effnetlite0",
            "--device", "cuda", "--out", tmp_path / "s", watch=(tmp_path,), has=("no CUDA device",))
    refused(2, "caption", world["cap"], _photo(world), "--device", "cuda", watch=(world["cap"],),
            has=("no CUDA device", "--device cpu"))
    refused(2, "train", "--model", "vqa", "--features", world["oracle"], "--out", tmp_path / "r", "--device", "cuda",
            *_vqa_files(world["toy"]), watch=(tmp_path,), has=("no CUDA device",))


def test_commands_on_a_run_whose_data_is_gone(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["vqa"], run)
    info = json.loads((run / "run.json").read_text())
    info["data"]["features"] = {"path": str(tmp_path / "gone"), "relative": "../gone"}
    (run / "run.json").write_text(json.dumps(info))
    for cmd in (["eval", run], ["report", run, "--out", tmp_path / "r.html"]):
        refused(1, *cmd, watch=(tmp_path,), has=("a file the run was trained on is gone", "--features"))
    moved = tmp_path / "moved"
    shutil.copytree(world["vqa_random"], moved)  # answer needs no data: the run's extractor is enough
    info = json.loads((moved / "run.json").read_text())
    info["data"]["features"] = {"path": str(tmp_path / "gone"), "relative": "../gone"}
    (moved / "run.json").write_text(json.dumps(info))
    code, lines, _ = butd("answer", moved, _photo(world), "what color is the circle?", "--png", tmp_path / "a.png")
    assert code == 0 and (tmp_path / "a.png").is_file(), lines


# ---------------------------------------------------------------------------- 4. answers and captions
def test_answer_warns_about_unknown_words_and_refuses_an_empty_question(world, tmp_path):
    photo, run = _photo(world), world["vqa_random"]
    refused(2, "answer", run, photo, "", "--png", tmp_path / "a.png", watch=(tmp_path,), has=("no words",))
    refused(2, "answer", run, photo, "Which astronaut flew this rocket in 1969?", "--png", tmp_path / "a.png",
            watch=(tmp_path,), has=("none of the question's words",))
    code, lines, stderr = butd("answer", run, photo, "what color is the astronaut?", "--png", tmp_path / "a.png")
    assert code == 0 and "warning: the model never saw 'astronaut': read as unknown words" in stderr


def test_caption_of_only_unreadable_files_fails(world, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    refused(1, "caption", world["cap"], bad, watch=(tmp_path, world["cap"]), has=("none of the 1 image(s)",))
    code, lines, stderr = butd("caption", world["cap"], bad, _photo(world))
    assert code == 0 and "bad.jpg: skipped" in stderr and lines[-1].startswith(str(_photo(world)))


# ---------------------------------------------------------------------------- 5. feedback while training
def test_training_banner_resume_point_and_plain_epoch_lines(world, tmp_path):
    code, lines, stderr = butd("train", "--model", "vqa", "--features", world["oracle"], "--out", tmp_path / "r",
                               "--epochs", "2", "--config", world["root"] / "vqa.yaml", *_vqa_files(world["toy"]))
    assert code == 0
    banner = next(ln for ln in lines if "steps/epoch" in ln)
    assert "examples" in banner and "device cpu" in banner and "parameters" in banner and "from scratch" in banner
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("steps/s" in ln and "ETA" in ln and "loss" in ln for ln in epochs)
    assert stderr.count("device: cpu") == 1


def test_progress_bar_on_a_terminal():
    import io

    from butd.train.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    lines: list[str] = []
    stream = Tty()
    p = Progress(lines.append, stream)
    p.banner(examples=10, batch_size=5, steps_per_epoch=2, epochs=1, device="cpu", parameters=7, epoch=0, step=0)
    p.start_epoch(0, 0)
    p.step(1.5)
    p.write("[train step 1] loss=1.5")
    p.step(1.25)
    p.end_epoch(0, 2, 1.4)
    drawn = stream.getvalue()
    assert "epoch 1/1" in drawn and "2/2" in drawn and "step/s" in drawn and "loss=1.25" in drawn
    assert "[train step 1] loss=1.5" in drawn and not any(ln.startswith("epoch 1/1:") for ln in lines)


def test_ctrl_c_says_where_training_stopped_and_resume_continues_there(world, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_VQA, "loop": {"batch_size": 1, "log_every": 1}}))
    cmd = [sys.executable, "-m", "butd", "train", "--model", "vqa", "--features", str(world["oracle"]),
           "--out", str(run), "--epochs", "50", "--config", str(cfg), *_vqa_files(world["toy"])]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    log = run / "metrics.jsonl"  # wait for the second logged step, then Ctrl-C
    while time.monotonic() < deadline and proc.poll() is None and (
            not log.exists() or log.read_text().count('"kind": "train"') < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert last.startswith("stopped at epoch ") and last.endswith("; rerun with --resume"), last
    point = last[len("stopped at "):-len("; rerun with --resume")]
    code, lines, _ = butd("train", "--model", "vqa", "--features", world["oracle"], "--out", run, "--resume",
                          "--epochs", "1", "--config", cfg, *_vqa_files(world["toy"]))
    assert f"resuming {run} at {point}" in lines, lines


def test_eval_and_report_bars_on_a_terminal_only():
    import io

    from butd.train.progress import terminal_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, plain = Tty(), io.StringIO()
    assert list(terminal_bar(iter(range(3)), "captioning", total=3, stream=stream)) == [0, 1, 2]
    assert "captioning:" in stream.getvalue() and "/3 [" in stream.getvalue() and "batch/s" in stream.getvalue()
    items = [1, 2]
    assert terminal_bar(items, "answering", stream=plain) is items and plain.getvalue() == ""


def test_a_start_refused_by_the_data_leaves_no_folder(world, tmp_path):
    data = json.loads((world["toy"] / "dataset_coco.json").read_text())
    for im in data["images"]:
        im["split"] = "test"  # no training images
    (tmp_path / "captions.json").write_text(json.dumps(data))
    refused(2, "train", "--model", "sat-soft", "--features", world["random"], "--out", tmp_path / "run",
            "--captions", tmp_path / "captions.json", "--config", world["root"] / "cap.yaml",
            watch=(tmp_path / "run",), has=("the split has no images",))
