"""Caption decoding over a model's ``init_state`` / ``step``: greedy, sampling and batched beam search.

All decoders start from BOS, run at most ``max_len`` steps and return token ids without the BOS, right-padded
with PAD after the EOS; PAD and BOS are never generated. ``max_len`` counts every generated token, the EOS
included, as self-critical.pytorch's ``max_length`` and the Caffe BeamSearch layer's ``sequence_length`` do, so a
caption never has more than ``max_len`` words. They do not change ``model.training``: call ``model.eval()``
first for deterministic decoding.

``no_repeat`` (a bool [V] tensor, True for words that may appear only once) is the Caffe Up-Down decoder's rule
(peteanderson80/caffe ``base_beam_search_layer.cu``, ``allowed_multiple``): a word already in the caption
cannot be generated again unless it is in the allowed list. :func:`repeat_mask` builds it from a vocabulary and
``DecodeConfig.allowed_repeats`` (Caffe's list for COCO, as words).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from butd.errors import UserError
from butd.models.caption_base import PAD, CaptionModel, reorder_state
from butd.registry import Entry, Registry

__all__ = ["CAFFE_ALLOWED_REPEATS", "DECODERS", "DecodeConfig", "beam_search", "check_beam", "decode", "greedy_decode",
           "repeat_mask", "sample_decode", "with_beam"]

BOS, EOS = 1, 2  # same as butd.datasets.vocab
# Up-Down-Captioner scripts/create_caption_lstm.py `allowed_multiple` (ids into data/coco_splits/train_vocab.txt)
CAFFE_ALLOWED_REPEATS = ("a", "on", "of", "the", "in", "with", "and", "is", "to", "an", ",", "at", "are", "that",
                         "it", "some", "by", "'", '"')


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode at evaluation time."""

    method: str = "beam"  # a key of DECODERS
    beam: int = 5  # self-critical.pytorch MODEL_ZOO (beam 5) and the Caffe decoder
    max_len: int = 20  # tokens generated at most, EOS included (self-critical max_length, Caffe max_length)
    length_penalty: float = 0.0  # GNMT alpha: final beams ranked by score / ((5 + len) / 6) ** alpha
    temperature: float = 1.0  # sampling only
    block_repeats: bool = False  # Caffe's rule: no word twice except allowed_repeats
    allowed_repeats: tuple[str, ...] = CAFFE_ALLOWED_REPEATS

    def __post_init__(self) -> None:
        check_beam(self.beam)
        _check_max_len(self.max_len)


def check_beam(beam: int) -> None:
    """The one check of a beam width (``--beam``, ``decode.beam``, ``beam_search(beam=)``)."""
    if not isinstance(beam, int) or beam < 1:
        raise UserError("the beam width must be at least 1", beam, "pass --beam 1 (greedy) or more", usage=True)


def with_beam(cfg: DecodeConfig, beam: int | None) -> DecodeConfig:
    """``cfg`` with its beam width overridden (``None`` keeps it; 1 means greedy)."""
    if beam is None:
        return cfg
    return replace(cfg, method="beam" if beam > 1 else "greedy", beam=beam)


def repeat_mask(words: Sequence[str], allowed: Sequence[str]) -> torch.Tensor:
    """bool [V]: True for the words that may not repeat (all but ``allowed`` and the special tokens)."""
    allowed_set = set(allowed)
    mask = torch.tensor([w not in allowed_set for w in words], dtype=torch.bool)
    mask[[PAD, BOS, EOS]] = False
    return mask


def _banned(logprobs: torch.Tensor) -> torch.Tensor:
    """PAD and BOS are never generated: their log-probabilities set to -inf (a copy)."""
    out = logprobs.clone()
    out[..., PAD] = float("-inf")
    out[..., BOS] = float("-inf")
    return out


def _check_max_len(max_len: int) -> None:
    if max_len < 1:
        raise UserError("max_len must be at least 1", max_len, "set decode.max_len to 1 or more", usage=True)


def _block(logprobs: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
    """logprobs [..., V] with -inf where ``seen`` [..., V] (used words that may not repeat) is True."""
    return logprobs if seen is None else logprobs.masked_fill(seen, float("-inf"))


def _run(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, max_len: int,
         pick, no_repeat: torch.Tensor | None = None, repeat: int = 1) -> dict[str, torch.Tensor]:
    """Shared loop of greedy / sampling: ``pick(logprobs [N, V]) -> tokens [N]``. ``repeat`` rows per image
    (image-major): ``init_state`` runs once per image, then its state, features and mask are repeated."""
    _check_max_len(max_len)
    state = model.init_state(feats, mask)
    if repeat > 1:
        rows = torch.arange(feats.size(0), device=feats.device).repeat_interleave(repeat)
        state = reorder_state(state, rows)
        feats, mask = feats.index_select(0, rows), mask.index_select(0, rows)
    n = feats.size(0)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=feats.device)
    done = torch.zeros(n, dtype=torch.bool, device=feats.device)
    seen = None
    out_tok, out_lp, out_attn = [], [], []
    for _ in range(max_len):
        logprobs, state, attn = model.step(tokens, state, feats, mask)
        if no_repeat is not None and seen is None:
            seen = torch.zeros(n, logprobs.size(-1), dtype=torch.bool, device=feats.device)
        nxt = pick(_block(_banned(logprobs.detach()), seen))
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        if seen is not None:
            seen[torch.arange(n, device=feats.device), nxt] |= no_repeat.to(feats.device)[nxt]
        lp = logprobs.gather(1, nxt.unsqueeze(1)).squeeze(1)
        out_lp.append(torch.where(done, torch.zeros_like(lp), lp))
        out_tok.append(nxt)
        out_attn.append(attn)
        done = done | (nxt == EOS)
        tokens = nxt
        if bool(done.all()):
            break
    return {"tokens": torch.stack(out_tok, 1), "logprobs": torch.stack(out_lp, 1),
            "attn": torch.stack(out_attn, 1)}


@torch.no_grad()
def greedy_decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, max_len: int = 20,
                  no_repeat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Argmax decoding. feats [B, K, D], mask [B, K] -> tokens [B, T], logprobs [B, T], attn [B, T, K]."""
    return _run(model, feats, mask, max_len, lambda lp: lp.argmax(-1), no_repeat)


def sample_decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, max_len: int = 20, *,
                  n: int = 1, temperature: float = 1.0, generator: torch.Generator | None = None,
                  with_grad: bool = False, no_repeat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Multinomial sampling from softmax(logprobs / temperature); ``n`` samples per image.

    Rows are image-major (row ``b * n + j`` is sample j of image b): ``init_state`` runs once per image and
    its state is repeated for the ``n`` samples (as self-critical.pytorch expands its projected features).
    ``logprobs`` [B*n, T] holds the model's log-probability of each sampled token (temperature 1),
    differentiable when ``with_grad``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy_decode for argmax)")

    def pick(logprobs: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logprobs.detach() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    with torch.set_grad_enabled(with_grad):
        return _run(model, feats, mask, max_len, pick, no_repeat, repeat=n)


@torch.no_grad()
def beam_search(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, beam: int = 5,
                max_len: int = 20, length_penalty: float = 0.0,
                no_repeat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Batched beam search.

    Returns tokens [B, T] (best beam), score [B] (its summed log-probability), beams [B, k, T] and
    beam_scores [B, k] (sorted best first by the ranking score). Finished beams are carried with their
    score frozen; ``length_penalty`` alpha > 0 ranks finished beams by score / ((5 + len) / 6) ** alpha.
    ``no_repeat`` [V] forbids a beam to repeat those words (Caffe's rule).
    """
    check_beam(beam)
    _check_max_len(max_len)
    b, dev = feats.size(0), feats.device
    state = model.init_state(feats, mask)
    rep = torch.arange(b, device=dev).repeat_interleave(beam)
    state, feats_k, mask_k = reorder_state(state, rep), feats.index_select(0, rep), mask.index_select(0, rep)
    scores = torch.full((b, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished = torch.zeros(b, beam, dtype=torch.bool, device=dev)
    seqs = torch.zeros(b, beam, 0, dtype=torch.long, device=dev)
    tokens = torch.full((b * beam,), BOS, dtype=torch.long, device=dev)
    base = (torch.arange(b, device=dev) * beam).unsqueeze(1)
    seen = None
    for _ in range(max_len):
        logprobs, state, _ = model.step(tokens, state, feats_k, mask_k)
        v = logprobs.size(-1)
        if no_repeat is not None and seen is None:
            seen = torch.zeros(b, beam, v, dtype=torch.bool, device=dev)
        logprobs = _block(_banned(logprobs.view(b, beam, v)), seen)
        frozen = torch.full_like(logprobs, float("-inf"))
        frozen[..., PAD] = 0.0
        logprobs = torch.where(finished.unsqueeze(-1), frozen, logprobs)
        top, idx = (scores.unsqueeze(-1) + logprobs).view(b, beam * v).topk(beam, dim=1)
        src, tok = idx // v, idx % v
        kept = seqs.gather(1, src.unsqueeze(-1).expand(-1, -1, seqs.size(2)))
        seqs = torch.cat([kept, tok.unsqueeze(-1)], 2)
        finished = finished.gather(1, src) | (tok == EOS)
        if seen is not None:
            seen = seen.gather(1, src.unsqueeze(-1).expand(-1, -1, v)).clone()
            # a chosen word can only be unseen or allowed, so setting (not or-ing) its flag is exact
            seen.scatter_(2, tok.unsqueeze(-1), no_repeat.to(dev)[tok].unsqueeze(-1))
        scores = top
        state = reorder_state(state, (base + src).view(-1))
        tokens = tok.view(-1)
        if bool(finished.all()):
            break
    rank = scores
    if length_penalty > 0:
        lengths = (seqs != PAD).sum(-1).to(scores.dtype)
        rank = scores / ((5.0 + lengths) / 6.0) ** length_penalty
    order = rank.argsort(dim=1, descending=True)
    seqs = seqs.gather(1, order.unsqueeze(-1).expand(-1, -1, seqs.size(2)))
    scores = scores.gather(1, order)
    return {"tokens": seqs[:, 0], "score": scores[:, 0], "beams": seqs, "beam_scores": scores}


def _greedy(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig,
            no_repeat: torch.Tensor | None) -> torch.Tensor:
    return greedy_decode(model, feats, mask, cfg.max_len, no_repeat)["tokens"]


def _beam(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig,
          no_repeat: torch.Tensor | None) -> torch.Tensor:
    return beam_search(model, feats, mask, cfg.beam, cfg.max_len, cfg.length_penalty, no_repeat)["tokens"]


def _sample(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig,
            no_repeat: torch.Tensor | None) -> torch.Tensor:
    return sample_decode(model, feats, mask, cfg.max_len, temperature=cfg.temperature,
                         no_repeat=no_repeat)["tokens"]


# name -> Entry(config, (model, feats, mask, cfg, no_repeat) -> tokens); butd.registry style
DECODERS = Registry("decoder", {
    "greedy": Entry(DecodeConfig, _greedy, "argmax word at every step (repeat block optional)"),
    "beam": Entry(DecodeConfig, _beam, "beam search of width beam, length penalty, repeat block optional"),
    "sample": Entry(DecodeConfig, _sample, "multinomial sampling with temperature")})


def decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig,
           words: Sequence[str] | None = None) -> torch.Tensor:
    """Token ids [B, T] by the method named in ``cfg`` (a key of :data:`DECODERS`), with all of ``cfg``'s
    options. ``words`` (the vocabulary, id order) is needed when ``cfg.block_repeats`` is on."""
    if cfg.method not in DECODERS:
        raise ValueError(f"unknown decoding method {cfg.method!r} (known: {', '.join(DECODERS)})")
    no_repeat = None
    if cfg.block_repeats:
        if words is None:
            raise ValueError("block_repeats needs the vocabulary (words) to know the allowed repeats")
        no_repeat = repeat_mask(words, cfg.allowed_repeats)
    return DECODERS[cfg.method](model, feats, mask, cfg, no_repeat)
