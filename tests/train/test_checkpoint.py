"""Checkpoints (safe loading, RNG states, exact resume) and the generic loop's guards and schedules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from butd.config import merge_config
from butd.models.updown_vqa import UpDownVQA, UpDownVQAConfig, vqa_loss
from butd.train.checkpoint import load_checkpoint, save_checkpoint
from butd.train.loop import (
    Callback,
    LoopConfig,
    LoopState,
    NonFiniteLossError,
    ScheduleConfig,
    fit,
    lr_at,
)

CFG = UpDownVQAConfig(word_dim=8, hidden_dim=12, attention_dim=8, joint_dim=10, classifier_dim=8, dropout=0.3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Synthetic(Dataset):
    def __init__(self, n: int = 40, k: int = 4, d: int = 6, a: int = 5) -> None:
        g = torch.Generator().manual_seed(1)
        self.tokens = torch.randint(1, 15, (n, 5), generator=g)
        self.features = torch.randn(n, k, d, generator=g)
        self.target = (torch.rand(n, a, generator=g) > 0.7).float()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "question_id": torch.tensor(i),
            "tokens": self.tokens[i],
            "features": self.features[i],
            "mask": torch.ones(self.features.shape[1], dtype=torch.bool),
            "target": self.target[i],
        }


class _Recorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, state: LoopState, logs: dict[str, float]) -> None:
        self.losses.append(logs["loss"])


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": vqa_loss(out["logits"], batch["target"])}


def _model_opt(seed: int = 0) -> tuple[UpDownVQA, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = UpDownVQA(15, 5, 6, CFG)
    return model, torch.optim.Adamax(model.parameters(), lr=1e-2)


LOOP = LoopConfig(
    epochs=3,
    batch_size=8,
    lr=1e-2,
    log_every=1,
    schedule=ScheduleConfig(name="warmup_step", unit="steps", warmup=3, decay_start=6, decay_every=4),
)


def test_roundtrip_with_safe_loading(tmp_path: Path) -> None:
    model, opt = _model_opt()
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    path = save_checkpoint(
        tmp_path / "c.pt", model, opt, step=12, epoch=2, meta={"answers": ["yes", "no"], "config": {"a": 1}}
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    ck = load_checkpoint(path)
    assert (ck.step, ck.epoch, ck.meta["answers"]) == (12, 2, ["yes", "no"])
    from butd.train.checkpoint import restore_rng

    restore_rng(ck.rng)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    torch.load(path, weights_only=True)  # nothing but tensors and plain containers inside
    fresh, _ = _model_opt(seed=1)
    fresh.load_state_dict(ck.model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_resume_continues_exactly(tmp_path: Path) -> None:
    data = _Synthetic()
    full = _Recorder()
    model, opt = _model_opt()
    torch.manual_seed(123)
    fit(model, opt, data, _loss, LOOP, tmp_path / "full", callbacks=[full], echo=None)
    assert len(full.losses) == 15

    first = _Recorder()
    model, opt = _model_opt()
    torch.manual_seed(123)
    state = fit(
        model,
        opt,
        data,
        _loss,
        merge_config(LOOP, {"max_steps": 7}),
        tmp_path / "cut",
        callbacks=[first],
        echo=None,
    )
    assert state.step == 7 and state.batch_in_epoch == 2  # stopped mid-epoch
    ck = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    torch.manual_seed(999)  # resuming must not depend on the ambient RNG
    rest = _Recorder()
    model2, opt2 = _model_opt(seed=77)
    fit(model2, opt2, data, _loss, LOOP, tmp_path / "cut", callbacks=[rest], resume=ck, echo=None)
    assert first.losses + rest.losses == full.losses  # bit-exact on CPU


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def bad_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        loss = vqa_loss(out["logits"], batch["target"])
        return {"loss": loss * float("nan") if calls["n"] == 4 else loss}

    model, opt = _model_opt()
    cfg = merge_config(LOOP, {"checkpoint_every": 1})
    with pytest.raises(NonFiniteLossError) as err:
        fit(model, opt, _Synthetic(), bad_loss, cfg, tmp_path, echo=None)
    assert err.value.step == 3 and len(err.value.batch_ids) == 8 and "step 3" in str(err.value)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").step == 3
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["error"] == "non_finite" and lines[-1]["batch_ids"] == err.value.batch_ids


def test_early_stopping_and_best_checkpoint(tmp_path: Path) -> None:
    scores = iter([50.0, 60.0, 55.0, 54.0, 70.0])
    model, opt = _model_opt()
    cfg = merge_config(LOOP, {"epochs": 5, "patience": 2})
    state = fit(
        model,
        opt,
        _Synthetic(),
        _loss,
        cfg,
        tmp_path,
        evaluate=lambda m: {"accuracy": next(scores)},
        echo=None,
    )
    assert state.stopped == "early_stopping" and state.epoch == 4
    assert (state.best, state.best_epoch) == (60.0, 1)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt").epoch == 2
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("epoch") == 4 and "train" in kinds


def test_schedules_are_pure_functions() -> None:
    cfg = ScheduleConfig(name="warmup_step", unit="steps", warmup=4, decay_start=10, decay_every=5, gamma=0.5)
    got = [lr_at(s, 1.0, cfg, 100) for s in (0, 1, 3, 9, 10, 14, 15)]
    assert got == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25])
    cos = ScheduleConfig(name="cosine", unit="steps", min_lr=0.1)
    assert lr_at(0, 1.0, cos, 11) == pytest.approx(1.0) and lr_at(10, 1.0, cos, 11) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_at(0, 1.0, ScheduleConfig(name="nope"), 1)
    with pytest.raises(ValueError, match="unknown LoopConfig key"):
        merge_config(LOOP, {"epoch": 3})
