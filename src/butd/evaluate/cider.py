"""Vectorised CIDEr-D for self-critical training.

Computes exactly the quantity of ``pycocoevalcap.cider.Cider`` (the CIDEr-D variant of Vedantam et al.,
2015): tf-idf vectors of 1..4-grams, per-order cosine with the candidate weights clipped at the reference
weights, a Gaussian length penalty with sigma 6, the mean over orders and references, times 10. Two
differences from that package are deliberate and documented:

* document frequencies come from a fixed corpus given once (``CiderD(train_refs)``), not from the references
  being scored, as is standard for SCST; scoring with the corpus equal to the scored references reproduces
  pycocoevalcap to floating-point precision;
* n-grams are hashed to integers and all pairwise work is done with numpy, so only whitespace splitting and a
  word-to-id lookup run in Python.

Like pycocoevalcap, the "length" in the penalty is the number of bigrams in a sentence (words - 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CiderD"]

_BASE = np.uint64(1 << 16)  # word ids are < 2**16, so a 4-gram packs into one uint64


class CiderD:
    """CIDEr-D with document frequencies fixed from a reference corpus.

    Args:
        refs_corpus: the corpus defining document frequencies: a mapping ``id -> [ref, ...]`` or a sequence of
            reference lists; each entry is one "document" (all references of one image).
        n: largest n-gram order (4 in CIDEr-D).
        sigma: standard deviation of the Gaussian length penalty (6 in CIDEr-D).
        chunk_docs: documents counted at a time for the document frequencies (bounds memory; the scorer is
            the same for every value).
    """

    def __init__(self, refs_corpus: Mapping[Any, Sequence[str]] | Sequence[Sequence[str]], n: int = 4,
                 sigma: float = 6.0, chunk_docs: int = 1000) -> None:
        if not 1 <= n <= 4:
            raise ValueError("n must be in 1..4 (n-grams are packed into 64-bit keys)")
        docs = list(refs_corpus.values()) if isinstance(refs_corpus, Mapping) else list(refs_corpus)
        if not docs:
            raise ValueError("CiderD needs a non-empty reference corpus")
        self.n = n
        self.sigma = float(sigma)
        self._vocab: dict[str, int] = {}
        # Each n-gram once per document that holds it, ``chunk_docs`` documents at a time: memory grows with
        # the distinct (document, n-gram) pairs, not with the every-occurrence arrays of the whole corpus (COCO:
        # 25M occurrences). Word ids are still given in order of first appearance, so nothing depends on it.
        per_doc = [self._doc_ngrams(docs[c:c + chunk_docs]) for c in range(0, len(docs), max(1, chunk_docs))]
        keys = np.concatenate(per_doc)
        del per_doc
        keys.sort()  # in place (np.unique would sort a copy)
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if keys.size else keys[:0]
        self._df_keys = keys[starts]
        self._df_vals = np.diff(np.append(starts, keys.size)).astype(np.float64)  # documents per n-gram
        self.ref_len = float(np.log(float(len(docs))))
        self.num_docs = len(docs)

    def _doc_ngrams(self, docs: Sequence[Sequence[str]]) -> np.ndarray:
        """uint64 keys of the distinct n-grams of each document, concatenated (grows the word table)."""
        ids, lens = self._word_ids([s for doc in docs for s in doc], self._vocab, grow=True)
        keys, sent_idx, _ = self._ngrams(ids, lens)
        doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])[sent_idx]
        uniq, inv = np.unique(keys, return_inverse=True)
        pair = inv.astype(np.int64) * len(docs) + doc_of  # (n-gram, document) codes
        pair.sort()
        first = np.ones(pair.size, dtype=bool)
        first[1:] = pair[1:] != pair[:-1]
        return uniq[pair[first] // len(docs)]

    # -- tokens -> ids -> n-gram keys ----------------------------------------------------------------
    @staticmethod
    def _word_ids(sents: Sequence[str], vocab: dict[str, int], grow: bool,
                  extra: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated 1-based word ids (int64) and per-sentence word counts."""
        out: list[int] = []
        lens = np.empty(len(sents), dtype=np.int64)
        for i, s in enumerate(sents):
            words = s.split()
            lens[i] = len(words)
            for w in words:
                j = vocab.get(w)
                if j is None:
                    table = vocab if grow else extra
                    assert table is not None
                    j = table.get(w)
                    if j is None:
                        j = len(vocab) + (0 if grow else len(table)) + 1
                        table[w] = j
                out.append(j)
        if len(vocab) + (len(extra) if extra else 0) >= int(_BASE):
            raise ValueError(f"CiderD supports at most {int(_BASE) - 1} distinct words")
        return np.asarray(out, dtype=np.int64), lens

    def _ngrams(self, ids: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every n-gram occurrence: (uint64 key, sentence index, order 0..n-1), sorted by nothing.

        Keys of different orders never collide: an order-k key lies in [B^(k-1), B^k) as ids are >= 1.
        """
        total = int(ids.size)
        sent_of = np.repeat(np.arange(lens.size), lens)
        pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)  # position within its sentence
        room = np.repeat(lens, lens) - pos  # words left from this position, inclusive
        u = ids.astype(np.uint64)
        keys, sidx, order = [], [], []
        key = np.zeros(total, dtype=np.uint64)
        for k in range(self.n):
            shifted = np.zeros(total, dtype=np.uint64)
            if total > k:
                shifted[: total - k] = u[k:]
            key = key * _BASE + shifted
            ok = room > k
            keys.append(key[ok])
            sidx.append(sent_of[ok])
            order.append(np.full(int(ok.sum()), k, dtype=np.int64))
        return np.concatenate(keys), np.concatenate(sidx), np.concatenate(order)

    # -- scoring ----------------------------------------------------------------------------------------
    def score(self, candidates: Mapping[Any, str] | Sequence[str],
              refs: Mapping[Any, Sequence[str]] | Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
        """CIDEr-D of each candidate against its references.

        Args:
            candidates: ``id -> sentence`` or a list of N sentences (tokenised, space-separated).
            refs: ``id -> [ref, ...]`` with the same ids, or a list of N reference lists (aligned).

        Returns:
            ``(mean, per_item)`` with ``per_item`` float64 [N] in the order of ``candidates``.
        """
        if isinstance(candidates, Mapping):
            if not isinstance(refs, Mapping):
                raise TypeError("candidates is a mapping, so refs must be one too")
            missing = [k for k in candidates if k not in refs]
            if missing:
                raise KeyError(f"{len(missing)} candidate ids have no references, e.g. {missing[0]!r}")
            cand_list = list(candidates.values())
            ref_lists = [refs[k] for k in candidates]
        else:
            cand_list = list(candidates)
            ref_lists = list(refs.values()) if isinstance(refs, Mapping) else list(refs)
        return self.score_lists(cand_list, ref_lists)

    def score_lists(self, cands: Sequence[str],
                    ref_lists: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
        """As :meth:`score` for aligned lists: ``cands`` [N], ``ref_lists`` [N][m_i]."""
        num = len(cands)
        if num != len(ref_lists):
            raise ValueError(f"{num} candidates but {len(ref_lists)} reference lists")
        if num == 0:
            return 0.0, np.zeros(0)
        m = np.asarray([len(r) for r in ref_lists], dtype=np.int64)
        if (m == 0).any():
            raise ValueError("every candidate needs at least one reference")
        n_cand = len(cands)
        ids, lens = self._word_ids([*cands, *(s for r in ref_lists for s in r)], self._vocab, grow=False,
                                   extra={})
        keys, sidx, order = self._ngrams(ids, lens)
        # dense ids of the distinct n-grams present, then unique (sentence, n-gram) rows with their tf
        uniq, inv = np.unique(keys, return_inverse=True)
        g_count = np.int64(max(uniq.size, 1))
        order_of = np.zeros(uniq.size, dtype=np.int64)
        order_of[inv] = order
        code, tf = np.unique(sidx * g_count + inv, return_counts=True)
        sent, gram = code // g_count, code % g_count
        df = np.zeros(uniq.size)
        if self._df_keys.size:
            pos = np.minimum(np.searchsorted(self._df_keys, uniq), self._df_keys.size - 1)
            df = np.where(self._df_keys[pos] == uniq, self._df_vals[pos], 0.0)
        idf = self.ref_len - np.log(np.maximum(1.0, df))
        weight = tf * idf[gram]
        n_sent = lens.size
        row = sent * self.n + order_of[gram]
        norm = np.sqrt(np.bincount(row, weights=weight * weight, minlength=n_sent * self.n))
        norm = norm.reshape(n_sent, self.n)
        length = np.maximum(lens - 1, 0).astype(np.float64)
        # candidate rows form a sorted prefix of `code`; look every reference row up among its candidate's
        n_c = int(np.searchsorted(sent, n_cand))
        c_code = code[:n_c]
        item_of_ref = np.repeat(np.arange(num), m)
        r_sent = sent[n_c:] - n_cand
        r_code = item_of_ref[r_sent] * g_count + gram[n_c:]
        hit_pos = np.minimum(np.searchsorted(c_code, r_code), max(n_c - 1, 0))
        hit = c_code[hit_pos] == r_code if n_c else np.zeros(r_code.size, dtype=bool)
        wc = np.where(hit, weight[:n_c][hit_pos] if n_c else 0.0, 0.0)
        wr = weight[n_c:]
        n_refs = int(m.sum())
        dot = np.bincount(r_sent * self.n + order_of[gram[n_c:]], weights=np.minimum(wc, wr) * wr,
                          minlength=n_refs * self.n).reshape(n_refs, self.n)
        denom = norm[item_of_ref] * norm[n_cand:]
        val = np.where(denom != 0, dot / np.where(denom != 0, denom, 1.0), dot)
        delta = length[item_of_ref] - length[n_cand:]
        val = val * np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_ref = val.mean(axis=1)
        per_item = np.bincount(item_of_ref, weights=per_ref, minlength=num) / m * 10.0
        return float(per_item.mean()), per_item

    # -- the fixed corpus statistics as plain arrays (to compute them once and share them, e.g. over ranks)
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Document frequencies, word table and settings as arrays (no objects, so no pickle needed)."""
        return {"df_keys": self._df_keys, "df_vals": self._df_vals, "words": np.asarray(list(self._vocab), dtype=str),
                "settings": np.asarray([self.n, self.sigma, self.ref_len, self.num_docs], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CiderD:
        """The scorer :meth:`to_arrays` describes (identical scores)."""
        obj = cls.__new__(cls)
        n, sigma, ref_len, num_docs = arrays["settings"].tolist()
        obj.n, obj.sigma, obj.ref_len, obj.num_docs = int(n), float(sigma), float(ref_len), int(num_docs)
        obj._vocab = {str(w): i + 1 for i, w in enumerate(arrays["words"].tolist())}
        obj._df_keys = np.asarray(arrays["df_keys"], dtype=np.uint64)
        obj._df_vals = np.asarray(arrays["df_vals"], dtype=np.float64)
        return obj

    def __repr__(self) -> str:
        return f"CiderD(docs={self.num_docs}, ngrams={self._df_keys.size}, n={self.n}, sigma={self.sigma})"

