"""Does a toy text encoder know every word of the vocabulary? Linear probes and paraphrase neighbours.

    python bench/t5_probe.py ENCODER_DIR... [--out bench/results_t5_probe.md]

For each T5 directory (e.g. checkpoints/toy/t5, the MuLan-style model's text tower, and one made by
t5_pretrain.py): captions are encoded and mean-pooled over their tokens (the stages cross-attend to
every token; the mean is a proxy that a linear read-out can use).
- Linear probes: one logistic regression per attribute (tempo slow / medium / fast, instrument,
  drums, mode) trained on captions of 600 corpus clips drawn as toy_corpus.py draws them, tested on
  toy_corpus.heldout_captions (templates and synonyms the corpus never uses) and on
  bench/judge_prompts.py's two prompt sets.
- Paraphrase neighbours: each `eval` prompt's nearest `tune` prompt (cosine of the pooled
  embeddings; the two sets phrase the same 40 combinations differently): the share whose neighbour
  has the same combination, and the same value of each attribute.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import judge_model as jm  # noqa: E402
import text  # noqa: E402
import toy_corpus  # noqa: E402
from judge_prompts import prompt_set  # noqa: E402

NAMES = ("tempo", "instrument", "drums", "mode")
CLASSES = {"tempo": ("slow", "medium", "fast"), "instrument": toy_corpus.INSTRUMENTS, "drums": (False, True),
           "mode": ("major", "minor")}


def corpus_captions(n, seed):
    """[(caption, attributes)]: the long captions of n clips drawn as the corpus draws them."""
    tunes, rng, out = toy_corpus.load_tunes(), np.random.default_rng(seed), []
    for _ in range(n):
        tune = tunes[int(rng.integers(len(tunes)))]
        a = toy_corpus.draw_attributes(rng, tune, 4.0)
        attrs = {"tempo": a["tempo"] or "medium", "instrument": a["instrument"], "drums": a["drums"], "mode": a["mode"]}
        out += [(c, attrs) for c in toy_corpus.long_captions(tune, a, rng)]
    return out


def pooled(encoder_dir, captions, max_len=48):
    tokenizer, encoder = text.load_t5(encoder_dir)
    ids, mask = tokenizer(list(captions), max_len)
    with torch.no_grad():
        h = encoder(ids, mask)                                        # (B, L, D)
    m = mask[..., None].float()
    return ((h * m).sum(1) / m.sum(1)).numpy().astype(np.float64)


def labels(attrs, name):
    return np.array([CLASSES[name].index(a[name] if a[name] is not None else "medium") for a in attrs])


def probe(encoder_dir, train, tests):
    x = pooled(encoder_dir, [c for c, _ in train])
    models = {n: jm.fit(x, labels([a for _, a in train], n), len(CLASSES[n])) for n in NAMES}
    out = {}
    for name, rows in tests.items():
        xt = pooled(encoder_dir, [c for c, _ in rows])
        out[name] = {n: float((jm.predict(models[n], xt) == labels([a for _, a in rows], n)).mean()) for n in NAMES}
    return out


def neighbours(encoder_dir):
    ev, tu = prompt_set("eval"), prompt_set("tune")
    a, b = pooled(encoder_dir, [c for c, _ in ev]), pooled(encoder_dir, [c for c, _ in tu])
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    nearest = (a @ b.T).argmax(axis=1)
    same = {n: float(np.mean([ev[i][1][n] == tu[j][1][n] for i, j in enumerate(nearest)])) for n in NAMES}
    same["all four"] = float(np.mean([ev[i][1] == tu[j][1] for i, j in enumerate(nearest)]))
    return same


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("encoders", nargs="+")
    p.add_argument("--out")
    args = p.parse_args()
    for d in args.encoders:
        if not os.path.isdir(d):
            p.error(f"{d}: not a directory")
    torch.set_num_threads(1)
    train = corpus_captions(600, seed=123)
    heldout = [(r["caption"], r["attributes"]) for r in toy_corpus.heldout_captions(np.random.default_rng(5))]
    tests = {"held-out captions": heldout, "judge prompts (eval + tune)": prompt_set("eval") + prompt_set("tune")}
    lines = ["| encoder | test captions | " + " | ".join(NAMES) + " |", "|---" * 6 + "|"]
    nn_lines = ["| encoder | " + " | ".join(NAMES) + " | all four |", "|---" * 6 + "|"]
    for d in args.encoders:
        for test, acc in probe(d, train, tests).items():
            lines.append(f"| {d} | {test} ({len(tests[test])}) | " + " | ".join(f"{acc[n]:.0%}" for n in NAMES) + " |")
        nn = neighbours(d)
        nn_lines.append(f"| {d} | " + " | ".join(f"{nn[n]:.0%}" for n in NAMES) + f" | {nn['all four']:.0%} |")
    report = "\n".join(["Linear probes on mean-pooled encodings (trained on 1800 corpus captions):", ""] + lines +
                       ["", "Nearest `tune` prompt of each `eval` prompt (cosine): same value of", ""] + nn_lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
