"""Up-Down VQA model: shapes, gated tanh, masked attention, GloVe loading, loss and top-k answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from butd.models.attention import GatedTanh, TopDownAttention, masked_softmax
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
