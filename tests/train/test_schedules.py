"""LR schedules in epochs/fractions, self-critical's step decay and scheduled sampling, clipping modes."""

from __future__ import annotations

import math

import pytest
import torch

from butd.train.loop import LoopConfig, _clip
from butd.train.schedules import ScheduleConfig, ScheduledSamplingConfig, lr_at, scheduled_sampling_prob


def test_step_decay_matches_self_critical_per_epoch() -> None:
    # self-critical.pytorch updown.yml: lr 5e-4, decay from epoch 0, x0.8 every 3 epochs
    cfg = ScheduleConfig(name="step", unit="epochs", decay_start=0, decay_every=3, gamma=0.8)
    spe = 7
    per_epoch = [lr_at(e * spe + 3, 5e-4, cfg, 30 * spe, spe) for e in range(10)]
    expected = [5e-4 * 0.8 ** (e // 3) for e in range(10)]
    assert per_epoch == pytest.approx(expected)
    # constant inside an epoch
    assert lr_at(3 * spe, 1.0, cfg, 30 * spe, spe) == lr_at(4 * spe - 1, 1.0, cfg, 30 * spe, spe) == 0.8


def test_warmup_in_fractions_scales_with_the_run() -> None:
    cfg = ScheduleConfig(name="warmup_step", unit="fraction", warmup=0.1, decay_start=0.6, decay_every=0.2,
                         gamma=0.25)
    # a 100-step run: 10 warmup steps, decays at 60 and 80; most of it at full lr
    lrs = [lr_at(s, 1.0, cfg, 100, 10) for s in range(100)]
    assert lrs[9] == 1.0 and lrs[0] == pytest.approx(0.1)
    assert sum(lr == 1.0 for lr in lrs) == 51  # steps 9..59
    assert lrs[60] == 0.25 and lrs[80] == 0.0625
    # the same numbers in steps would leave a 100-step run entirely inside a 1000-step warmup
    steps = ScheduleConfig(name="warmup_step", unit="steps", warmup=1000, decay_start=8000, decay_every=2000)
    assert max(lr_at(s, 1.0, steps, 100, 10) for s in range(100)) <= 0.1


def test_unknown_unit_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schedule unit"):
        lr_at(0, 1.0, ScheduleConfig(unit="minutes"), 10)


def test_scheduled_sampling_follows_self_critical() -> None:
    cfg = ScheduledSamplingConfig(start=0, increase_every=5, increase_prob=0.05, max_prob=0.25)
    got = [scheduled_sampling_prob(e, cfg) for e in (0, 4, 5, 9, 10, 24, 25, 40)]
    assert got == pytest.approx([0, 0, 0.05, 0.05, 0.10, 0.20, 0.25, 0.25])
    assert scheduled_sampling_prob(30, ScheduledSamplingConfig()) == 0.0  # off by default


def _grads(values: list[float]) -> torch.nn.Module:
    m = torch.nn.Linear(len(values), 1, bias=False)
    m.weight.grad = torch.tensor([values])
    return m


def test_clip_by_value_is_elementwise_and_by_norm_is_global() -> None:
    m = _grads([0.05, -0.3, 2.0])
    norm = _clip(m, LoopConfig(grad_clip=0.1, clip_mode="value"))
    assert norm == pytest.approx((0.05**2 + 0.09 + 4.0) ** 0.5)
    assert m.weight.grad.tolist() == [pytest.approx([0.05, -0.1, 0.1])]
    m = _grads([0.0, 3.0, 4.0])
    _clip(m, LoopConfig(grad_clip=0.1, clip_mode="norm"))
    assert m.weight.grad.tolist() == [pytest.approx([0.0, 0.06, 0.08], rel=1e-4)]
    with pytest.raises(ValueError, match="unknown clip_mode"):
        _clip(m, LoopConfig(clip_mode="both"))


@pytest.mark.parametrize("mode,clip,scale", [("norm", 0.25, 1.0), ("norm", 0.25, 1e-3), ("norm", 0.0, 1.0),
                                             ("value", 0.1, 1.0), ("value", 0.0, 1.0)])
def test_clip_equals_torch_clipping_bit_for_bit(mode: str, clip: float, scale: float) -> None:
    """_clip (one norm pass, rewrites only where clipping changes a gradient) == torch's clip_grad_norm_ /
    clip_grad_value_ after the norm, for clipped and unclipped norms; the returned norm is the same."""
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    grads = [torch.randn(s) * scale for s in shapes]
    model = torch.nn.Module()
    for i, g in enumerate(grads):
        model.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(g.shape)))
        getattr(model, f"p{i}").grad = g.clone()
    ref = [g.clone().requires_grad_() for g in grads]
    for r, g in zip(ref, grads, strict=True):
        r.grad = g.clone()
    want = float(torch.nn.utils.clip_grad_norm_(ref, clip if mode == "norm" and clip > 0 else float("inf")))
    if mode == "value" and clip > 0:
        torch.nn.utils.clip_grad_value_(ref, clip)
    got = _clip(model, LoopConfig(grad_clip=clip, clip_mode=mode))
    assert got == want
    for i, r in enumerate(ref):
        assert torch.equal(getattr(model, f"p{i}").grad, r.grad)


@pytest.mark.parametrize("mode", ["norm", "value"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_clip_reports_non_finite_gradients_untouched(mode: str, bad: float) -> None:
    m = _grads([0.5, bad, 2.0])
    norm = _clip(m, LoopConfig(grad_clip=0.1, clip_mode=mode))
    assert not math.isfinite(norm)  # fit raises NonFiniteLossError before the optimizer step
    assert m.weight.grad[0, 0] == 0.5 and m.weight.grad[0, 2] == 2.0  # nothing was clipped


def test_min_steps_per_epoch_shrinks_the_batch_on_small_sets_only() -> None:
    from butd.train.loop import effective_batch_size

    cfg = LoopConfig(batch_size=512, min_steps_per_epoch=50)
    assert effective_batch_size(443_757, cfg) == 512  # VQA v2 train: the reference batch
    assert effective_batch_size(2_000, cfg) == 40  # a toy set: 50 steps an epoch
    assert effective_batch_size(10, cfg) == 1
    assert effective_batch_size(2_000, LoopConfig(batch_size=512)) == 512  # off by default


def test_scheduled_sampling_feeds_sampled_words_only_when_on() -> None:
    """prob 0 is teacher forcing; prob 1 feeds a word sampled from the previous step (never PAD or BOS),
    so later logits change while the first step's cannot."""
    import torch

    from butd.models.registry import build_caption_model
    from butd.train.scheduled_sampling import ScheduledSampling

    torch.manual_seed(0)
    model = build_caption_model("updown", 11, 8, {"embed_dim": 16, "hidden_dim": 24, "att_dim": 12,
                                                  "dropout": 0.0})
    batch = {"features": torch.randn(4, 5, 8), "mask": torch.ones(4, 5, dtype=torch.bool),
             "captions": torch.tensor([[1, 4, 5, 6, 7, 2]] * 4)}
    ss = ScheduledSampling(model, ScheduledSamplingConfig(start=0)).train()
    torch.testing.assert_close(ss(batch)["logits"], model(batch)["logits"])  # prob 0: teacher forcing
    fed: list[torch.Tensor] = []
    ss.prob = 1.0
    feed = ss._feed
    ss._feed = lambda t, words, prev: fed.append(feed(t, words, prev)) or fed[-1]  # type: ignore[method-assign]
    out = ss(batch)
    ref = model(batch)
    torch.testing.assert_close(out["logits"][:, 0], ref["logits"][:, 0])
    assert len(fed) == 4 and all(bool((w >= 2).all()) for w in fed)
    assert any(not torch.equal(w, batch["captions"][:, t + 1]) for t, w in enumerate(fed))
    assert not torch.allclose(out["logits"][:, 1:], ref["logits"][:, 1:])


def test_noam_is_self_criticals_noamopt_rate() -> None:
    # NoamOpt.rate: factor * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), s = 1 at the first update;
    # configs/transformer.yaml gives the same curve as base lr = (d_model * warmup)^-0.5 (factor 1)
    d_model, warmup = 512, 20000
    cfg = ScheduleConfig(name="noam", unit="steps", warmup=warmup)
    base = (d_model * warmup) ** -0.5
    for step in (0, 1, 999, 19998, 19999, 20000, 80000, 300000):
        s = step + 1
        ref = d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)
        assert lr_at(step, base, cfg, 400000, 11000) == pytest.approx(ref, rel=1e-12)
    assert lr_at(warmup - 1, base, cfg, 400000) == pytest.approx(3.125e-4)  # the peak, at the end of the warmup
    # in epochs: the warmup scales with the epoch length
    per_epoch = ScheduleConfig(name="noam", unit="epochs", warmup=1)
    assert lr_at(9, 1.0, per_epoch, 100, 10) == 1.0 and lr_at(39, 1.0, per_epoch, 100, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="the noam schedule needs a warmup"):
        lr_at(0, 1.0, ScheduleConfig(name="noam"), 10)
