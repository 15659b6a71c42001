"""Speed changes that reorder the computation give the same numbers (issue 18).

* an image-major batch (one feature row per image + ``image_index``) gives the loss and every gradient of the
  same captions as one feature row per caption;
* Up-Down's cached v_bar gates and fused step are the paper's equations with ``nn.LSTMCell``;
* SCST sampling from one ``init_state`` per image, expanded, draws the samples of repeated features with the
  same log-probabilities and gradients.
"""

from __future__ import annotations

import pytest
import torch
from caption_sizes import tiny

from butd.models.attention import masked_softmax
from butd.models.caption_base import CaptionModel, caption_rows, masked_mean, reorder_state
from butd.models.decoding import sample_decode
from butd.models.registry import build_caption_model, caption_models

SMALL = {"embed_dim": 16, "hidden_dim": 24, "att_dim": 12, "dropout": 0.3}


def _sizes(name: str) -> dict:
    """Tiny sizes of ``name``. The LSTM captioners' dropout acts after the expansion (on per-caption rows), so
    it is on and must draw the same masks in both layouts; a model whose dropout also acts on the per-image
    encoder (the transformer) draws differently shaped masks, so its layouts are compared without dropout."""
    sizes = tiny(name)
    return {**sizes, "dropout": 0.3} if "embed_dim" in sizes else sizes
V, D = 13, 8


def _image_major(seed: int = 0) -> dict:
    """3 images (masked regions), 7 captions: 3, 1 and 3 per image."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 5, D, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    feats[~mask] = 0.0
    caps = torch.randint(3, V, (7, 7), generator=g)
    caps[:, 0] = 1
    for row, end in enumerate([6, 3, 4, 6, 2, 5, 6]):
        caps[row, end] = 2
        caps[row, end + 1:] = 0
    return {"features": feats, "mask": mask, "captions": caps, "image_index": torch.tensor([0, 0, 0, 1, 2, 2, 2])}


def _per_caption(batch: dict) -> dict:
    """The same captions with one feature row each (the layout before image-major batches)."""
    idx = batch["image_index"]
    return {"features": batch["features"][idx], "mask": batch["mask"][idx], "captions": batch["captions"]}


def _loss_and_grads(model, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout masks and SAT-hard's draws: the same stream either way
    loss = model.loss(model(batch), batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", caption_models())
def test_image_major_batch_equals_per_caption_rows(name: str) -> None:
    torch.manual_seed(0)
    model = build_caption_model(name, V, D, _sizes(name)).double().train()
    batch = _image_major()
    loss_im, grads_im = _loss_and_grads(model, batch, seed=5)
    loss_pc, grads_pc = _loss_and_grads(model, _per_caption(batch), seed=5)
    torch.testing.assert_close(loss_im, loss_pc, rtol=1e-12, atol=1e-12)
    assert grads_im.keys() == grads_pc.keys() and len(grads_im) == len(list(model.parameters()))
    for n in grads_pc:
        torch.testing.assert_close(grads_im[n], grads_pc[n], rtol=1e-10, atol=1e-12, msg=n)
    assert float(loss_im) > 0 and any(float(g.abs().sum()) > 0 for g in grads_im.values())


def _paper_updown_logits(model, batch: dict) -> torch.Tensor:
    """Up-Down written as the paper's equations with the model's own nn.LSTMCell modules (the form before
    the v_bar gates were cached): logits [B, T, V]."""
    feats, mask, caps = batch["features"], batch["mask"], batch["captions"]
    b, h = feats.size(0), model.config.hidden_dim
    h1 = c1 = h2 = c2 = feats.new_zeros(b, h)
    v_bar, att_feats = masked_mean(feats, mask), model.w_va(feats)
    out = []
    for t in range(caps.size(1) - 1):
        h1, c1 = model.att_lstm(torch.cat([h2, v_bar, model.embed(caps[:, t])], -1), (h1, c1))
        alpha = masked_softmax(model.w_a(torch.tanh(att_feats + model.w_ha(h1).unsqueeze(1))).squeeze(-1), mask, 1)
        v_hat = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)
        h2, c2 = model.lang_lstm(torch.cat([v_hat, h1], -1), (h2, c2))
        out.append(model.w_p(model.drop(h2)))
    return torch.stack(out, 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_updown_cached_gates_equal_lstmcell_equations(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(1)
    model = build_caption_model("updown", V, D, {**SMALL, "dropout": 0.0}).to(dtype)
    batch = _per_caption(_image_major())
    batch["features"] = batch["features"].to(dtype)
    grads = []
    for fn in (lambda: model(batch)["logits"], lambda: _paper_updown_logits(model, batch)):
        model.zero_grad(set_to_none=True)
        logits = fn()
        (logits * torch.linspace(-1, 1, V, dtype=dtype)).sum().backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, g_fast), (paper, g_paper) = grads
    torch.testing.assert_close(fast, paper, rtol=tol, atol=tol)
    for n in g_paper:
        torch.testing.assert_close(g_fast[n], g_paper[n], rtol=tol, atol=tol, msg=n)


@pytest.mark.parametrize("name", caption_models())
def test_scst_sampling_from_expanded_state_equals_repeated_features(name: str) -> None:
    torch.manual_seed(2)
    model = build_caption_model(name, V, D, _sizes(name)).double().train()
    batch = _image_major()
    feats, mask, n = batch["features"], batch["mask"], 4
    runs = []
    for expanded in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(9)
        gen = torch.Generator().manual_seed(3)
        if expanded:
            out = sample_decode(model, feats, mask, 6, n=n, generator=gen, with_grad=True)
        else:  # the former way: features repeated before init_state
            out = sample_decode(model, feats.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), 6,
                                generator=gen, with_grad=True)
        (out["logprobs"].sum()).backward()
        runs.append((out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = runs
    assert torch.equal(a["tokens"], b["tokens"]) and a["tokens"].shape[0] == 3 * n
    torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["attn"], b["attn"], rtol=1e-12, atol=1e-12)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-10, atol=1e-12, msg=k)


def test_state_helpers() -> None:
    shared = (torch.ones(2, 2),)
    state = {"h": torch.arange(6.0).view(3, 2), "w": shared}
    out = reorder_state(state, torch.tensor([2, 2, 0]))
    assert out["h"].tolist() == [[4.0, 5.0], [4.0, 5.0], [0.0, 1.0]] and out["w"] is shared
    batch = _image_major()
    assert caption_rows(batch, batch["mask"]).shape == (7, 5)
    assert caption_rows(_per_caption(batch), batch["mask"]) is batch["mask"]


@pytest.mark.parametrize("name", caption_models())
def test_words_embedded_once_equal_embedded_per_step(name: str) -> None:
    """Teacher forcing embeds the whole batch's input words once (``embed_words``); a feed (scheduled sampling)
    embeds per step: with a feed that keeps the words, the loss and every gradient are the same."""
    torch.manual_seed(4)
    model = build_caption_model(name, V, D, _sizes(name)).double().train()
    batch = _image_major()
    if type(model).unroll is CaptionModel.unroll:  # step-loop models embed once (a parallel decoder has its own)
        assert model.embed_words(batch["captions"]) is not None
    runs = []
    for feed in (None, lambda t, words, prev: words):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(6)
        out = model.unroll(batch, feed)
        loss = model.loss(out, batch)["loss"]
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = runs
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-10, atol=1e-12, msg=n)
