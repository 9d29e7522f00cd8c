"""At what noise level does a generator lose the notes' key? SDEdit from real clips, strength by strength.

    python bench/key_probe.py [--pipeline spec] [--clips 20] [--strengths 0.03,0.1,0.3,1.0] [--seed 0] [--ckpt-dir DIR]

Real toy-corpus clips of tunes the judge never trained on (bench/judge_model.py's held-out tunes) are
given to the pipeline as `--init` audio (SDEdit, Meng et al. 2022: the generator starts from the clip
noised to t = strength) with a prompt that names all four of their attributes. Each 24 kHz output is
measured as bench/judge.py's key table measures (judge_model.key_profile: pitches on the semitone grid,
notes in the best-fitting scale) and heard by the judge for mode. Strength 1 is generation from noise;
small strengths keep the clip's notes. Where grid and in-key fall between two strengths is where the
generator's own estimates replace the clip's pitches with its wandering ones.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import beyond  # noqa: E402
import cascade  # noqa: E402
import judge as judge_bench  # noqa: E402
import judge_model as jm  # noqa: E402
import toy_corpus  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default=cascade.DEFAULT_PIPELINE, choices=tuple(cascade.PIPELINES))
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--strengths", default="0.03,0.1,0.3,1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", default=judge_bench.DEFAULT_JUDGE)
    args = p.parse_args(argv)
    strengths = [float(s) for s in args.strengths.split(",")]
    t0 = time.perf_counter()
    judge = judge_bench.load_judge(args.judge, log=lambda line: print(line, flush=True))
    models = beyond.load(args.pipeline, args.ckpt_dir)
    _, heldout = jm.split_tunes(toy_corpus.load_tunes())
    clips, attrs = jm.render_real(heldout, args.clips, args.seed + 7)
    rows = [("the given clips", [jm.key_profile(c, jm.RATE) for c in clips],
             [beyond.judge_hears(judge, c, jm.RATE)["mode"] == a["mode"] for c, a in zip(clips, attrs)])]
    for s in strengths:
        keys, modes = [], []
        for i, (clip, a) in enumerate(zip(clips, attrs)):
            task = cascade.AudioTask("init", torch.from_numpy(clip).float(), jm.RATE, strength=s)
            out = beyond.run(models, args.pipeline, [beyond.prompt_for(dict(a, tempo=None if a["tempo"] == "medium" else a["tempo"]))], task, 0.0, args.seed + i, {
                name: cascade.Sampling() for name in cascade.STAGES})[0]
            keys.append(jm.key_profile(out, beyond.RATE))
            modes.append(beyond.judge_hears(judge, out)["mode"] == a["mode"])
        rows.append((f"strength {s:g}", keys, modes))
        print(f"  strength {s:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    lines = [f"{args.pipeline} pipeline, {args.clips} held-out real clips (seed {args.seed}), 24 kHz output:", "",
             "| clips | pitches on the semitone grid (median) | notes in the best-fitting scale (median) | mode heard as the clip's |",
             "|---|---|---|---|"]
    for name, keys, modes in rows:
        k = np.array(keys)
        lines.append(f"| {name} | {np.nanmedian(k[:, 0]):.2f} | {np.nanmedian(k[:, 1]):.2f} | {np.mean(modes):.0%} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
