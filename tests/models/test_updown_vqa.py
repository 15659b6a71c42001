"""Up-Down VQA model: shapes, gated tanh, masked attention, GloVe loading, loss and top-k answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from butd.models.attention import GatedTanh, ProductAttention, ReluWeightNorm, TopDownAttention, masked_softmax
from butd.models.updown_vqa import UpDownVQA, UpDownVQAConfig, load_glove, vqa_loss

SMALL = UpDownVQAConfig(word_dim=12, hidden_dim=16, attention_dim=10, joint_dim=14, classifier_dim=9)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(b: int = 3, k: int = 5, d: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 20, (b, 6), generator=g)
    tokens[0, 3:] = 0
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, 2:] = False
    return {
        "tokens": tokens,
        "features": torch.randn(b, k, d, generator=g),
        "mask": mask,
        "question_id": torch.arange(b) + 100,
    }


def test_gated_tanh_formula() -> None:
    torch.manual_seed(0)
    layer = GatedTanh(4, 3)
    x = torch.randn(2, 4)
    w, bias = layer.linear.weight, layer.linear.bias
    expected = torch.tanh(x @ w[:3].T + bias[:3]) * torch.sigmoid(x @ w[3:].T + bias[3:])
    torch.testing.assert_close(layer(x), expected)


def test_masked_softmax_and_attention() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w = masked_softmax(scores, mask)
    assert w[0, 2] == 0 and torch.allclose(w[0].sum(), torch.tensor(1.0)) and w[1].abs().sum() == 0
    att = TopDownAttention(7, 5, 6)
    b = _batch()
    v_hat, alpha = att(b["features"], torch.randn(3, 5), b["mask"])
    assert v_hat.shape == (3, 7) and alpha.shape == (3, 5)
    assert torch.allclose(alpha.sum(1), torch.ones(3)) and alpha[1, 2:].abs().sum() == 0


def test_forward_shapes_and_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = UpDownVQA(20, 11, 7, SMALL).eval()
    b = _batch()
    out = model(b)
    assert out["logits"].shape == (3, 11) and out["attention"].shape == (3, 5)
    changed = dict(b, features=b["features"].clone())
    changed["features"][1, 2:] = 1e3  # padded regions of question 1
    torch.testing.assert_close(model(changed)["logits"], out["logits"])
    tokens = b["tokens"].clone()
    tokens[0, 3:] = 0
    assert torch.equal(model.encode_question(tokens)[0], model.encode_question(b["tokens"])[0])


def test_default_sizes_follow_the_paper() -> None:
    cfg = UpDownVQAConfig()
    assert (cfg.word_dim, cfg.hidden_dim, cfg.attention_dim, cfg.joint_dim) == (300, 512, 512, 512)


def test_loss_is_bce_with_soft_targets() -> None:
    logits = torch.randn(4, 6)
    target = torch.zeros(4, 6)
    target[:, 0], target[1, 2] = 1.0, 0.3
    manual = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()
    torch.testing.assert_close(vqa_loss(logits, target), manual)


def test_answer_bias_starts_at_the_prior() -> None:
    model = UpDownVQA(20, 3, 7, SMALL)
    model.init_answer_bias(torch.tensor([0.5, 0.1, 0.0]))
    torch.testing.assert_close(torch.sigmoid(model.w_o.bias)[:2], torch.tensor([0.5, 0.1]))


def test_top_k_answers_with_attention() -> None:
    torch.manual_seed(0)
    model = UpDownVQA(20, 4, 7, SMALL)
    res = model.answer(_batch(), ["a", "b", "c", "d"], k=2)
    assert len(res) == 3 and res[0]["question_id"] == 100
    assert len(res[0]["answers"]) == 2 and res[0]["scores"][0] >= res[0]["scores"][1]
    assert len(res[1]["attention"]) == 2 and abs(sum(res[1]["attention"]) - 1) < 1e-5
    assert model.training


def test_glove_loading(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("cat 1 2 3\ndog 4 5 6\nzebra 0 0 1\n")
    table = load_glove(path, ["<pad>", "<unk>", "dog", "cat", "owl"], dim=3)
    assert table.shape == (5, 3) and table[0].abs().sum() == 0
    assert table[2].tolist() == [4, 5, 6] and table[3].tolist() == [1, 2, 3]
    model = UpDownVQA(
        5,
        2,
        4,
        UpDownVQAConfig(word_dim=3, hidden_dim=4, attention_dim=4, joint_dim=4, classifier_dim=4),
        embeddings=table,
    )
    assert model.embed.weight[3].tolist() == [1, 2, 3]


HH = dict(word_dim=12, hidden_dim=16, attention_dim=16, joint_dim=16, classifier_dim=32, dropout=0.2,
          layer="relu_wn", attention="product", classifier_dropout=0.5)  # bottom-up-attention-vqa's form


def _wn(linear: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """weight_norm(nn.Linear, dim=None) from its parameters: (g / ||V||_F) V x + b, g a scalar."""
    g, v = linear.parametrizations.weight.original0, linear.parametrizations.weight.original1
    assert g.numel() == 1  # one scale for the whole matrix (fc.py: dim=None)
    return x @ (g * v / v.norm()).T + linear.bias


def test_relu_weight_norm_layer_formula() -> None:
    torch.manual_seed(0)
    layer = ReluWeightNorm(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), torch.relu(_wn(layer.linear, x)))
    with torch.no_grad():  # the scale is learned separately from the direction
        layer.linear.parametrizations.weight.original0.mul_(2.0)
    torch.testing.assert_close(layer(x), torch.relu(_wn(layer.linear, x)))


@pytest.mark.parametrize("layer", ["gated_tanh", "relu_wn"])
def test_concat_attention_split_weights_equal_the_concatenation(layer: str) -> None:
    """f_a([v_i, q]) computed as W_v v_i + W_q q equals the layer on the concatenation."""
    torch.manual_seed(1)
    att = TopDownAttention(7, 5, 6, layer=layer).double()
    b = _batch()
    feats, q = b["features"].double(), torch.randn(3, 5, dtype=torch.float64)
    cat = torch.cat([feats, q.unsqueeze(1).expand(-1, feats.size(1), -1)], dim=-1)
    expected = att.w_a(att.f_a(cat)).squeeze(-1)
    torch.testing.assert_close(att.scores(feats, q), expected, rtol=1e-12, atol=1e-12)


def test_product_attention_formula() -> None:
    torch.manual_seed(2)
    att = ProductAttention(7, 5, 6, layer="relu_wn")
    b = _batch()
    q = torch.randn(3, 5)
    joint = torch.relu(_wn(att.f_v.linear, b["features"])) * torch.relu(_wn(att.f_q.linear, q)).unsqueeze(1)
    scores = _wn(att.w_a, joint).squeeze(-1)
    v_hat, alpha = att(b["features"], q, b["mask"])
    torch.testing.assert_close(alpha, masked_softmax(scores, b["mask"], dim=1))
    torch.testing.assert_close(v_hat, torch.bmm(alpha.unsqueeze(1), b["features"]).squeeze(1))


def test_bottom_up_attention_vqa_form() -> None:
    """layer relu_wn + attention product: the equations of base_model.py's baseline0_newatt, layer by layer."""
    torch.manual_seed(3)
    model = UpDownVQA(20, 11, 7, UpDownVQAConfig(**HH)).eval()
    b = _batch()
    q = model.encode_question(b["tokens"])
    att = model.attention
    scores = _wn(att.w_a, torch.relu(_wn(att.f_v.linear, b["features"])) * torch.relu(_wn(att.f_q.linear, q))[:, None])
    alpha = masked_softmax(scores.squeeze(-1), b["mask"], dim=1)
    v_emb = (alpha.unsqueeze(-1) * b["features"]).sum(1)
    joint = torch.relu(_wn(model.f_q.linear, q)) * torch.relu(_wn(model.f_v.linear, v_emb))
    logits = _wn(model.w_o, torch.relu(_wn(model.f_o.linear, joint)))
    torch.testing.assert_close(model(b)["logits"], logits)
    assert model.dropout.p == 0.5 and model.attention.dropout.p == 0.2  # classifier.py 0.5, NewAttention 0.2
    model.init_answer_bias(torch.tensor([0.5] + [0.1] * 10))
    torch.testing.assert_close(torch.sigmoid(model.w_o.bias)[0], torch.tensor(0.5))
    # it trains: a few Adamax steps lower the loss on a fixed batch
    model.train()
    target = torch.zeros(3, 11)
    target[:, 2] = 1.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    with torch.no_grad():
        first = float(vqa_loss(model.eval()(b)["logits"], target))
    model.train()
    for _ in range(5):
        loss = vqa_loss(model(b)["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(vqa_loss(model.eval()(b)["logits"], target)) < first


def test_unknown_layer_or_attention_is_one_clear_line() -> None:
    from butd.errors import UserError

    for bad in ({"layer": "relu"}, {"attention": "bilinear"}):
        with pytest.raises(UserError) as info:
            UpDownVQA(20, 4, 7, UpDownVQAConfig(**{**HH, **bad}))
        assert "\n" not in str(info.value) and ("relu_wn" in str(info.value) or "product" in str(info.value))
