"""What counts as a line butd wrote, strictly: every line a command prints must match one of butd's known line
shapes, and none may match a known foreign shape (metric libraries, Java tools, torchrun, Ray).

Add a shape here when butd starts printing a new kind of line; never add a foreign one to BUTD.
"""

from __future__ import annotations

import re

_N = r"-?\d[\d,]*(?:\.\d+)?"  # a number as butd prints it (1,234 / 3.896 / -0.5)
BUTD = [re.compile(p) for p in (
    r"^device: (cpu|cuda(:\d+)?|mps)$",
    # butd eval (captioning), tasks/caption.py
    r"^\S+ on \w+ \(\d+ images, beam \d+\)$",
    rf"^  [A-Z][A-Za-z0-9-]* +{_N}$",
    r"^  [A-Za-z][A-Za-z -]* skipped: .+$",
    r"^wrote \S+ and \S+$",
    r"^wrote \S+(, \S+)+$",
    # the caption eval's extra steps (evaluate/caption_checks.py checks_lines)
    rf"^  CHAIR-s {_N}  CHAIR-i {_N}  object recall ({_N}|-)  \(\d+ of \d+ object mentions hallucinated; words: .+\)$",
    rf"^  grounding accuracy ({_N}|-)  attention correctness ({_N}|-)  \(\d+ mentions with boxes\)$",
    rf"^  repeats {_N}%  bad endings {_N}%  mean length {_N}  vocabulary \d+  copied from training ({_N}|-)%$",
    # the VQA eval's per-question-type table (tasks/vqa.py)
    r"^  per question type \(official types, in the evaluator's order\):$",
    rf"^    .+ +{_N}  \(\d+ questions\)$",
    # butd eval (VQA), train/vqa.py
    r"^\w+: overall \d+\.\d\d on \d+ questions \(official evaluator, \w+ rules\)$",
    r"^  [a-z/]+ +\d+\.\d\d$",
    r"^\w+: skipped \d+ question\(s\) on \d+ image\(s\) missing from the feature store$",
    # butd train: the loop's epoch lines and the summaries of train/loop.py and the trainers
    rf"^(xe|scst|vqa|train): {_N} (examples|questions|pairs).*$",
    r"^(epoch|scst epoch) \d+/\d+: .*$",
    r"^validation after epoch \d+/\d+: .*$",  # train/callbacks.py MetricsLog
    r"^(resuming|resumed) .*$",
    r"^wrote \S+ \(.*\)$",
    r"^warning: \S+ was extracted by .+ with random weights: .+$",  # tasks/guard.py
    # butd demo (demo.py): rich rules, commands, timings, captions, answers, the summary table
    r"^─* ?\d?\.? ?.*─+$|^─+$",
    r"^\$ butd .+$",
    r"^\(\d+\.\d s\)$",
    r"^\S+\.(jpg|png)\t.+$",
    rf"^ *{_N}  \S.*$",
    r"^ *[┏┃┡│└┗┌┍┎┐╭╰╮╯━─═┳┻╇╈┯┷┼╋┤├┬┴┘┛┓┣┫]",  # the summary table's borders and rows
    r"^ *demo finished in \d+ s .*$",
)]
FOREIGN = [re.compile(p) for p in (
    r"'testlen'", r"^ratio: ", r"PTBTokenizer tokenized", r"Threads\( StanfordCoreNLP \)", r"SPICE evaluation took",
    r"Parsing (reference|test) captions", r"Loading classifier from", r"^Initiating Stanford", r"edu\.stanford",
    r"^[WEI]\d{4} \d\d:\d\d:\d\d", r"OMP_NUM_THREADS", r"^\*{5,}$", r"torch/distributed", r"torchelastic",
    r"^\(\w+ pid=\d+", r"\braylet\b", r"Started a local Ray instance",
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING)",
    r"UserWarning", r"FutureWarning", r"DeprecationWarning",
)]


def classify(text: str) -> tuple[list[str], list[str]]:
    """(foreign lines, lines of no known butd shape) of ``text``."""
    foreign, unknown = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        if any(p.search(line) for p in FOREIGN):
            foreign.append(line)
        elif not any(p.search(line) for p in BUTD):
            unknown.append(line)
    return foreign, unknown
