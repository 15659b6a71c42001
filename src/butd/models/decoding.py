"""Caption decoding over a model's ``init_state`` / ``step``: greedy, sampling and batched beam search.

All decoders start from BOS, run at most ``max_len + 1`` steps (``max_len`` words and the EOS) and return
token ids without the BOS, right-padded with PAD after the EOS; PAD and BOS are never generated. They do
not change ``model.training``: call ``model.eval()`` first for deterministic decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from butd.models.caption_base import PAD, CaptionModel, State
from butd.registry import Entry, Registry

__all__ = ["DECODERS", "DecodeConfig", "beam_search", "decode", "greedy_decode", "sample_decode"]

BOS, EOS = 1, 2  # same as butd.datasets.vocab


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode at evaluation time."""

    method: str = "beam"  # a key of DECODERS
    beam: int = 3
    max_len: int = 16
    length_penalty: float = 0.0  # GNMT alpha: final beams ranked by score / ((5 + len) / 6) ** alpha
    temperature: float = 1.0  # sampling only


def _banned(logprobs: torch.Tensor) -> torch.Tensor:
    """PAD and BOS are never generated: their log-probabilities set to -inf (a copy)."""
    out = logprobs.clone()
    out[..., PAD] = float("-inf")
    out[..., BOS] = float("-inf")
    return out


def _reorder(state: State, index: torch.Tensor) -> State:
    return {k: v.index_select(0, index) for k, v in state.items()}


def _run(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, max_len: int,
         pick) -> dict[str, torch.Tensor]:
    """Shared loop of greedy / sampling: ``pick(logprobs [N, V]) -> tokens [N]``."""
    n = feats.size(0)
    state = model.init_state(feats, mask)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=feats.device)
    done = torch.zeros(n, dtype=torch.bool, device=feats.device)
    out_tok, out_lp, out_attn = [], [], []
    for _ in range(max_len + 1):
        logprobs, state, attn = model.step(tokens, state, feats, mask)
        nxt = pick(_banned(logprobs.detach()))
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
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
def greedy_decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor,
                  max_len: int = 16) -> dict[str, torch.Tensor]:
    """Argmax decoding. feats [B, K, D], mask [B, K] -> tokens [B, T], logprobs [B, T], attn [B, T, K]."""
    return _run(model, feats, mask, max_len, lambda lp: lp.argmax(-1))


def sample_decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, max_len: int = 16, *,
                  n: int = 1, temperature: float = 1.0, generator: torch.Generator | None = None,
                  with_grad: bool = False) -> dict[str, torch.Tensor]:
    """Multinomial sampling from softmax(logprobs / temperature); ``n`` samples per image.

    Rows are image-major (row ``b * n + j`` is sample j of image b). ``logprobs`` [B*n, T] holds the
    model's log-probability of each sampled token (temperature 1), differentiable when ``with_grad``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy_decode for argmax)")
    if n > 1:
        feats, mask = feats.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)

    def pick(logprobs: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logprobs.detach() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    with torch.set_grad_enabled(with_grad):
        return _run(model, feats, mask, max_len, pick)


@torch.no_grad()
def beam_search(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, beam: int = 3,
                max_len: int = 16, length_penalty: float = 0.0) -> dict[str, torch.Tensor]:
    """Batched beam search.

    Returns tokens [B, T] (best beam), score [B] (its summed log-probability), beams [B, k, T] and
    beam_scores [B, k] (sorted best first by the ranking score). Finished beams are carried with their
    score frozen; ``length_penalty`` alpha > 0 ranks finished beams by score / ((5 + len) / 6) ** alpha.
    """
    if beam < 1:
        raise ValueError("beam must be >= 1")
    b, dev = feats.size(0), feats.device
    state = model.init_state(feats, mask)
    rep = torch.arange(b, device=dev).repeat_interleave(beam)
    state, feats_k, mask_k = _reorder(state, rep), feats.index_select(0, rep), mask.index_select(0, rep)
    scores = torch.full((b, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished = torch.zeros(b, beam, dtype=torch.bool, device=dev)
    seqs = torch.zeros(b, beam, 0, dtype=torch.long, device=dev)
    tokens = torch.full((b * beam,), BOS, dtype=torch.long, device=dev)
    base = (torch.arange(b, device=dev) * beam).unsqueeze(1)
    for _ in range(max_len + 1):
        logprobs, state, _ = model.step(tokens, state, feats_k, mask_k)
        v = logprobs.size(-1)
        logprobs = _banned(logprobs.view(b, beam, v))
        frozen = torch.full_like(logprobs, float("-inf"))
        frozen[..., PAD] = 0.0
        logprobs = torch.where(finished.unsqueeze(-1), frozen, logprobs)
        top, idx = (scores.unsqueeze(-1) + logprobs).view(b, beam * v).topk(beam, dim=1)
        src, tok = idx // v, idx % v
        kept = seqs.gather(1, src.unsqueeze(-1).expand(-1, -1, seqs.size(2)))
        seqs = torch.cat([kept, tok.unsqueeze(-1)], 2)
        finished = finished.gather(1, src) | (tok == EOS)
        scores = top
        state = _reorder(state, (base + src).view(-1))
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


def _greedy(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    return greedy_decode(model, feats, mask, cfg.max_len)["tokens"]


def _beam(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    return beam_search(model, feats, mask, cfg.beam, cfg.max_len, cfg.length_penalty)["tokens"]


def _sample(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    return sample_decode(model, feats, mask, cfg.max_len, temperature=cfg.temperature)["tokens"]


DECODERS = Registry("decoder", {  # name -> Entry(config, (model, feats, mask, cfg) -> tokens)
    "greedy": Entry(DecodeConfig, _greedy, "argmax word at every step"),
    "beam": Entry(DecodeConfig, _beam, "beam search of width beam, length penalty"),
    "sample": Entry(DecodeConfig, _sample, "multinomial sampling with temperature")})


def decode(model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Token ids [B, T] by the method named in ``cfg`` (a key of :data:`DECODERS`)."""
    if cfg.method not in DECODERS:
        raise ValueError(f"unknown decoding method {cfg.method!r} (known: {', '.join(DECODERS)})")
    return DECODERS[cfg.method](model, feats, mask, cfg)
