"""Speed of butd's vectorised CiderD against pycocoevalcap's Cider on the same inputs (same run).

Prints both timings and the ratio, for a cold call (no cached state besides the df corpus) and an SCST-like
workload (5 sampled captions per image against that image's references, df from the training corpus).
"""

from __future__ import annotations

import random
import sys
import time

import numpy as np

from butd.evaluate.cider import CiderD


def _corpus(n_images: int, seed: int = 0) -> tuple[dict[int, list[str]], dict[int, str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)]
    zipf = [1.0 / (i + 1) for i in range(len(words))]

    def sent() -> str:
        return " ".join(rng.choices(words, weights=zipf, k=rng.randint(6, 16)))

    refs = {i: [sent() for _ in range(5)] for i in range(n_images)}
    cands = {i: sent() for i in refs}
    return refs, cands


def _best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    from pycocoevalcap.cider.cider import Cider

    refs, cands = _corpus(2000)
    scorer = CiderD(refs)
    gts = {k: v for k, v in refs.items()}
    res = {k: [v] for k, v in cands.items()}
    mean_ref, _ = Cider().compute_score(gts, res)
    mean, _ = scorer.score(cands, refs)
    assert abs(mean - mean_ref) < 1e-6, (mean, mean_ref)
    t_ref = _best_of(lambda: Cider().compute_score(gts, res))
    t_ours = _best_of(lambda: scorer.score(cands, refs))
    t_build = _best_of(lambda: CiderD(refs))
    print(f"images={len(refs)} refs/image=5  pycocoevalcap Cider: {t_ref * 1e3:.1f} ms  "
          f"CiderD.score: {t_ours * 1e3:.1f} ms  (corpus df build once: {t_build * 1e3:.1f} ms)")
    print(f"speed ratio (pycocoevalcap / CiderD.score): {t_ref / t_ours:.1f}x")
    ratio_with_build = t_ref / (t_ours + t_build)
    print(f"speed ratio including building the df corpus in the same call: {ratio_with_build:.1f}x")

    # SCST-like batch: 50 images x 5 samples
    rng = np.random.default_rng(0)
    batch = [int(i) for i in rng.choice(len(refs), 50, replace=False)]
    samples = [cands[(i + j) % len(cands)] for i in batch for j in range(5)]
    sample_refs = [refs[i] for i in batch for _ in range(5)]
    t_batch = _best_of(lambda: scorer.score_lists(samples, sample_refs), repeats=5)
    print(f"SCST batch (50 images x 5 samples): {t_batch * 1e3:.2f} ms")
    return 0 if t_ref / t_ours >= 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
