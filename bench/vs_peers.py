"""Benchmark: butd against its peers on the same work (issue 18): seconds per step, steps/s, questions/s,
parameter counts, and the speed ratio peer time / butd time (> 1: butd is faster).

Peers: RL = ruotianluo/self-critical.pytorch @ 4c48a33 (captioning), HH = hengyuan-hu/bottom-up-attention-vqa @
3925206 (VQA). Rows, on seeded synthetic batches (36 x 2048 regions, vocabulary 10,000, 16-word captions, Up-Down
at the paper's sizes; VQA: 20,000 question words, 14 tokens, 3,129 answers):

  xe-50x5, xe-10x5  Up-Down XE step (Adam, clip by value 0.1): 50 or 10 images x 5 captions (RL's updown.yml batch)
  scst-50x5         Up-Down SCST step: 50 images x 5 samples, greedy baseline, 16 tokens, CIDEr-D reward
  beam5-300         beam 5 over 300 images, 16 tokens (eval mode, no gradients)
  vqa-*-512, -128   VQA step (Adamax, global-norm clip 0.25) at batch 512 / 128: vqa-hh = HH's form
                    (ReLU + weight norm, product attention) and vqa-gated = gated tanh, both at HH's widths
                    (1024 / 2048); vqa-paper = configs/vqa-paper.yaml (512-d gated tanh)
  cider             CIDEr-D of 2,000 captions against 5 references each, document frequencies cached

Without --rl / --hh: butd's side only, with ratios against the peers' medians from the issue's table (the
baseline recorded in BENCHMARKS.md; comparable only on that machine and load). With ``--rl PATH`` / ``--hh PATH``
(a checkout of the peer: RL with its ``cider`` submodule for the reward and the cider row), the peer's own model
code runs in this process, steps alternated with butd's (order flipped every repeat), medians of wall and process
CPU time (CPU time is steadier on a shared machine). With --hh, HH's weights are also copied into butd's HH form
and the logits compared. No peer code is part of butd.

Usage: python bench/vs_peers.py [--rl PATH] [--hh PATH] [--rows xe-10x5 ...] [--repeats 3] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

from butd.datasets.vocab import Vocab
from butd.evaluate.cider import CiderD
from butd.models.decoding import beam_search
from butd.models.registry import build_caption_model
from butd.models.updown_vqa import UpDownVQA, UpDownVQAConfig, vqa_loss
from butd.train.loop import LoopConfig, _clip
from butd.train.scst import ScstConfig, ScstObjective, reward_refs
from butd.train.vqa import load_config as load_vqa_config

V, K, D, L, SAMPLES = 10_000, 36, 2048, 16, 5
QV, QLEN, ANSWERS = 20_000, 14, 3129
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PEERS = {"RL": "ruotianluo/self-critical.pytorch @ 4c48a33", "HH": "hengyuan-hu/bottom-up-attention-vqa @ 3925206"}
# issue 18's table: row -> (peer, peer median s, butd median s when filed); 2-core CPU, 2 torch threads
BASELINE = {"xe-50x5": ("RL", 10.71, 10.42), "xe-10x5": ("RL", 3.20, 4.03), "scst-50x5": ("RL", 11.33, 11.37),
            "beam5-300": ("RL", 28.4, 17.0), "vqa-gated-512": ("HH", 3.08, 6.12), "vqa-gated-128": ("HH", 0.77, 1.59),
            "vqa-hh-512": ("HH", 3.08, None), "vqa-hh-128": ("HH", 0.77, None),
            "vqa-paper-512": ("HH", 3.08, 2.35), "cider": ("RL", 1.40, 0.09)}
HH_FORM = {"layer": "relu_wn", "attention": "product", "classifier_dropout": 0.5}
GATED = {"layer": "gated_tanh", "attention": "concat", "classifier_dropout": None}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _captions(n_img: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    caps = torch.randint(4, V, (n_img * SAMPLES, L + 2), generator=g)
    caps[:, 0], caps[:, -1] = 1, 2  # BOS, EOS: every caption has 16 words
    refs = torch.randint(4, V, (n_img, 5, 10), generator=g)
    return {"features": torch.randn(n_img, K, D, generator=g), "captions": caps, "refs": refs}


# ------------------------------------------------------------------------------------------------ butd's side
def _butd_xe(data: dict, n_img: int):
    model = build_caption_model("updown", V, D, {})
    opt, clip = torch.optim.Adam(model.parameters(), lr=5e-4), LoopConfig(grad_clip=0.1, clip_mode="value")
    batch = {"features": data["features"], "mask": torch.ones(n_img, K, dtype=torch.bool),
             "captions": data["captions"], "image_index": torch.arange(n_img).repeat_interleave(SAMPLES)}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch)["loss"].backward()
        _clip(model, clip)
        opt.step()
    return step, _params(model)


def _vocab() -> Vocab:
    return Vocab.build([[f"w{i}" for i in range(4, V)]], min_count=1)  # ids 4.. are the words w4..


def _ref_strings(refs: torch.Tensor) -> list[list[str]]:
    return [[" ".join(f"w{int(t)}" for t in r) for r in img] for img in refs]


def _butd_scst(data: dict, n_img: int):
    model = build_caption_model("updown", V, D, {})
    refs = _ref_strings(data["refs"])
    obj = ScstObjective(model, CiderD(reward_refs(refs, True)), _vocab(), ScstConfig(samples=SAMPLES, max_len=L))
    opt, clip = torch.optim.Adam(model.parameters(), lr=5e-5), LoopConfig(grad_clip=0.1, clip_mode="value")
    batch = {"features": data["features"], "mask": torch.ones(n_img, K, dtype=torch.bool), "refs": refs}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        obj(batch)["loss"].backward()
        _clip(model, clip)
        opt.step()
    return step, _params(model)


def _butd_beam(data: dict, n_img: int):
    model = build_caption_model("updown", V, D, {}).eval()
    mask = torch.ones(n_img, K, dtype=torch.bool)
    return (lambda: beam_search(model, data["features"], mask, beam=5, max_len=L)), _params(model)


def _vqa_batch(b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(b, ANSWERS, generator=g) > 0.999).float()
    return {"tokens": torch.randint(1, QV, (b, QLEN), generator=g),
            "features": torch.randn(b, K, D, generator=g).relu(), "mask": torch.ones(b, K, dtype=torch.bool),
            "target": target}


def vqa_model_config(form: str) -> UpDownVQAConfig:
    """The VQA rows' models: configs/vqa.yaml's widths in HH's or the gated tanh form, or configs/vqa-paper.yaml."""
    if form == "paper":
        return load_vqa_config(CONFIGS / "vqa-paper.yaml").model
    return load_vqa_config(CONFIGS / "vqa.yaml", {"model": HH_FORM if form == "hh" else GATED}).model


def _butd_vqa(form: str, b: int, vocab: int = QV):
    model = UpDownVQA(vocab, ANSWERS, D, vqa_model_config(form))
    opt, clip = torch.optim.Adamax(model.parameters(), lr=2e-3), LoopConfig(grad_clip=0.25, clip_mode="norm")
    batch = _vqa_batch(b)

    def step() -> None:
        loss = vqa_loss(model(batch)["logits"], batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip(model, clip)
        opt.step()
    return step, _params(model)


def _butd_cider(data: dict):
    refs, cands = data
    scorer = CiderD(refs)  # df cached from the references
    return (lambda: scorer.score(cands, refs)), 0


# ------------------------------------------------------------------------------------------------ the peers
def _import_rl(path: Path) -> types.SimpleNamespace:
    for p in (str(path / "cider"), str(path)):
        if p not in sys.path:
            sys.path.insert(0, p)
    with contextlib.redirect_stdout(io.StringIO()):
        att = importlib.import_module("captioning.models.AttModel")
        losses = importlib.import_module("captioning.modules.losses")
        try:
            rewards = importlib.import_module("captioning.utils.rewards")
            cider = importlib.import_module("pyciderevalcap.ciderD.ciderD")
        except ImportError:
            rewards = cider = None
    return types.SimpleNamespace(att=att, losses=losses, rewards=rewards, cider=cider)


def _rl_model(rl) -> torch.nn.Module:
    opt = types.SimpleNamespace(vocab_size=V - 1, input_encoding_size=1000, rnn_size=1000, num_layers=2,
                                drop_prob_lm=0.5, seq_length=L, max_length=L, fc_feat_size=D, att_feat_size=D,
                                att_hid_size=512, vocab={str(i): f"w{i}" for i in range(1, V)})
    return rl.att.UpDownModel(opt)  # configs/updown/updown.yml sizes


def _rl_xe(rl, data: dict, n_img: int):
    model = _rl_model(rl)
    opt, crit = torch.optim.Adam(model.parameters(), lr=5e-4), rl.losses.LanguageModelCriterion()
    labels = data["captions"].clone().view(n_img, SAMPLES, -1)
    labels[..., 0], labels[..., -1] = 0, 0  # RL: 0 is the start and end token
    masks = torch.ones(labels.shape)
    feats = data["features"]

    def step() -> None:
        opt.zero_grad()
        crit(model(feats.mean(1), feats, labels[..., :-1], None), labels[..., 1:], masks[..., 1:]).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)  # tools/train.py, grad_clip_mode value
        opt.step()
    return step, _params(model)


def _rl_scst(rl, data: dict, n_img: int):
    if rl.rewards is None:
        raise RuntimeError("the RL checkout has no cider submodule (needed for its SCST reward)")
    model, feats = _rl_model(rl), data["features"]
    opt, crit = torch.optim.Adam(model.parameters(), lr=5e-5), rl.losses.RewardCriterion()
    # its labels end with the 0 end token, which array_to_str keeps (the cached df has it too)
    gts = [np.concatenate([img.numpy(), np.zeros((len(img), 1), dtype=np.int64)], 1) for img in data["refs"]]
    rl.rewards.CiderD_scorer = _rl_cider(rl, [[" ".join(str(int(t)) for t in r) + " 0" for r in img]
                                              for img in data["refs"]])
    ropt = types.SimpleNamespace(cider_reward_weight=1.0, bleu_reward_weight=0.0)

    def step() -> None:  # modules/loss_wrapper.py's sc_flag branch, then tools/train.py's update
        opt.zero_grad()
        model.eval()
        with torch.no_grad():
            greedy, _ = model(feats.mean(1), feats, None, mode="sample", opt={"sample_method": "greedy"})
        model.train()
        gen, logprobs = model(feats.mean(1), feats, None, mode="sample",
                              opt={"sample_method": "sample", "beam_size": 1, "sample_n": SAMPLES})
        with contextlib.redirect_stdout(io.StringIO()):
            reward = rl.rewards.get_self_critical_reward(greedy, gts, gen, ropt)
        crit(logprobs, gen.data, torch.from_numpy(reward).to(logprobs)).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
        opt.step()
    return step, _params(model)


def _rl_beam(rl, data: dict, n_img: int):
    model, feats = _rl_model(rl).eval(), data["features"]

    def step() -> None:
        with torch.no_grad():
            model(feats.mean(1), feats, None, mode="sample", opt={"beam_size": 5, "sample_n": 1})
    return step, _params(model)


def _rl_cider(rl, refs: list[list[str]]):
    """RL's CiderD with document frequencies computed once from ``refs`` by its own scorer (as its cached df)."""
    scorer = rl.cider.CiderD(df="corpus")
    for r in refs:
        scorer.cider_scorer.cook_append(None, r)
    scorer.cider_scorer.compute_doc_freq()
    scorer.cider_scorer.ref_len = np.log(float(len(refs)))
    scorer.cider_scorer.df_mode, scorer.cider_scorer.crefs, scorer.cider_scorer.ctest = "cached", [], []
    return scorer


def _rl_cider_row(rl, data):
    refs, cands = data
    scorer = _rl_cider(rl, list(refs.values()))
    res = [{"image_id": i, "caption": [c]} for i, c in cands.items()]
    mean = scorer.compute_score(refs, res)[0]
    print(f"  parity: RL CiderD mean {mean:.6f}, butd CiderD mean {CiderD(refs).score(cands, refs)[0]:.6f}")
    return (lambda: scorer.compute_score(refs, res)), 0


def _import_hh(path: Path) -> types.SimpleNamespace:
    sys.path.insert(0, str(path))
    try:
        return types.SimpleNamespace(model=importlib.import_module("base_model"),
                                     train=importlib.import_module("train"))
    finally:
        sys.path.remove(str(path))


def _hh_model(hh, vocab: int = QV) -> torch.nn.Module:
    ds = types.SimpleNamespace(dictionary=types.SimpleNamespace(ntoken=vocab), v_dim=D, num_ans_candidates=ANSWERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its torch.nn.utils.weight_norm is deprecated
        model = hh.model.build_baseline0_newatt(ds, 1024)  # main.py: --model baseline0_newatt --num_hid 1024
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):  # classifier.py's in-place dropout after a ReLU fails autograd's
            m.inplace = False  # version check in torch >= 1.x; out of place it computes the same
    return model


def _hh_vqa(hh, b: int):
    model, batch = _hh_model(hh), _vqa_batch(b)
    opt = torch.optim.Adamax(model.parameters())  # train.py: torch default lr 2e-3
    boxes = torch.zeros(b, K, 4)

    def step() -> None:
        logits = model(batch["features"], boxes, batch["tokens"], None)
        loss = hh.train.instance_bce_with_logits(logits, batch["target"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
    return step, _params(model)


def hh_parity(hh) -> float:
    """Max |logit difference| between HH's model and butd's HH form holding HH's weights (eval mode)."""
    torch.manual_seed(0)
    theirs, ours = _hh_model(hh, 50).eval(), UpDownVQA(51, ANSWERS, D, vqa_model_config("hh")).eval()
    pairs = {"w_emb.emb": "embed", "v_att.v_proj.main.0": "attention.f_v.linear",
             "v_att.q_proj.main.0": "attention.f_q.linear", "v_att.linear": "attention.w_a",
             "q_net.main.0": "f_q.linear", "v_net.main.0": "f_v.linear", "classifier.main.0": "f_o.linear",
             "classifier.main.3": "w_o"}
    names = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():
        target = key.replace("q_emb.rnn", "gru")
        for a, b in pairs.items():
            if key.startswith(a + "."):
                target = b + key[len(a):]
        for a, b in names.items():
            target = target.replace(a, b)
        state[target] = value.reshape(state[target].shape)
    ours.load_state_dict(state)
    batch = {k: v[:8] for k, v in _vqa_batch(8).items()}
    batch["tokens"] = batch["tokens"] % 49 + 1  # no padding: HH's last position is butd's last real token
    with torch.no_grad():
        hh_logits = theirs(batch["features"], None, batch["tokens"], None)
        return float((hh_logits - ours(batch)["logits"]).abs().max())


# ------------------------------------------------------------------------------------------------ timing
def _cider_data(n: int = 2000) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, 3001)
    zipf /= zipf.sum()

    def sent() -> str:
        return " ".join(f"w{int(i)}" for i in rng.choice(3000, int(rng.integers(6, 17)), p=zipf))
    refs = {i: [sent() for _ in range(5)] for i in range(n)}
    return refs, {i: sent() for i in refs}


def build_row(row: str, rl, hh) -> dict:
    """side name -> (one-step callable, parameter count)."""
    kind, _, size = row.partition("-")
    sides: dict = {}
    if kind in ("xe", "scst", "beam5"):
        n_img = {"50x5": 50, "10x5": 10, "300": 300}[size]
        data = _captions(n_img)
        fns = {"xe": (_butd_xe, _rl_xe), "scst": (_butd_scst, _rl_scst), "beam5": (_butd_beam, _rl_beam)}[kind]
        sides["butd"] = fns[0](data, n_img)
        if rl is not None:
            sides["RL"] = fns[1](rl, data, n_img)
    elif kind == "vqa":
        form, b = size.split("-")
        sides["butd"] = _butd_vqa(form, int(b))
        if hh is not None:
            sides["HH"] = _hh_vqa(hh, int(b))
    elif kind == "cider":
        data = _cider_data()
        sides["butd"] = _butd_cider(data)
        if rl is not None and rl.cider is not None:
            sides["RL"] = _rl_cider_row(rl, data)
    return sides


def time_row(sides: dict, repeats: int) -> dict:
    """Warm-up, then ``repeats`` alternated rounds (order flipped each round): medians per side."""
    for fn, _ in sides.values():
        fn()
    wall: dict = {n: [] for n in sides}
    cpu: dict = {n: [] for n in sides}
    names = list(sides)
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            sides[n][0]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    out = {n: {"wall_s": statistics.median(wall[n]), "cpu_s": statistics.median(cpu[n]), "walls": wall[n],
               "params": sides[n][1]} for n in names}
    if len(names) == 2:
        out["paired_ratio"] = statistics.median(p / b for p, b in zip(wall[names[1]], wall["butd"], strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rl", type=Path, help="a checkout of ruotianluo/self-critical.pytorch (with cider/)")
    ap.add_argument("--hh", type=Path, help="a checkout of hengyuan-hu/bottom-up-attention-vqa")
    ap.add_argument("--rows", nargs="*", default=list(BASELINE), choices=list(BASELINE))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the issue's table: 2)")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rl = _import_rl(args.rl.resolve()) if args.rl else None
    hh = _import_hh(args.hh.resolve()) if args.hh else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peers: "
          + ", ".join(f"{k} = {v}" for k, v in PEERS.items()))
    if hh is not None:
        print(f"HH parity: max |logit difference| of butd's HH form holding HH's weights: {hh_parity(hh):.2e}")
    results = {}
    print("| row | butd s (cpu s) | butd /s | params | peer | peer s (cpu s) | ratio wall (cpu, paired) [peer params] "
          "| issue's peer s, ratio to it |")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        torch.manual_seed(0)
        res = time_row(build_row(row, rl, hh), args.repeats)
        results[row] = res
        peer, issue_s, _ = BASELINE[row]
        b = res["butd"]
        per = int(row.split("-")[-1]) if row.startswith("vqa") else 1
        rate = f"{per / b['wall_s']:.0f} q/s" if row.startswith("vqa") else f"{1 / b['wall_s']:.3f} steps/s"
        cells = [row, f"{b['wall_s']:.2f} ({b['cpu_s']:.2f})", rate, f"{b['params'] / 1e6:.1f}M", peer]
        if peer in res:
            p = res[peer]
            cells += [f"{p['wall_s']:.2f} ({p['cpu_s']:.2f})", f"{p['wall_s'] / b['wall_s']:.2f} "
                      f"({p['cpu_s'] / b['cpu_s']:.2f}, {res['paired_ratio']:.2f}) [{p['params'] / 1e6:.1f}M]"]
        else:
            cells += ["not run", "-"]
        cells.append(f"{issue_s:.2f}, {issue_s / b['wall_s']:.2f}")
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.json:  # after every row: a long run interrupted keeps what it measured
            args.json.write_text(json.dumps({"threads": args.threads, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
