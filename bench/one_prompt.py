"""What the judge hears in one prompt's clips, seed after seed, on each pipeline at the defaults.

    python bench/one_prompt.py "lo-fi guitar ballad" [--seeds 100-119] [--pipelines wave,spec]
                               [--ckpt-dir checkpoints/toy] [--judge /tmp/fidelity_judge.pt]

Each seed is one `python sample.py PROMPT --pipeline P --seed S` (the same code path: sample.py's
default knobs, cascade.cascade_generate, one clip per call). Per pipeline it prints how often the judge
of bench/judge.py (classifiers trained on real toy-corpus clips) hears each tempo, instrument, drums and
mode value in the 24 kHz output, the median noise floor (audio_measures.noise_floor_db) and the CPU
seconds per second of audio.
"""
import argparse
import collections
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import audio_measures  # noqa: E402
import cascade  # noqa: E402
import judge as judge_bench  # noqa: E402
import judge_model as jm  # noqa: E402

RATE = judge_bench.STAGE_RATES["super-res"]       # the pipelines' 24 kHz output


def seed_range(text):
    """"100-119" or "1,2,5" -> a list of ints."""
    if "-" in text:
        lo, hi = (int(s) for s in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(s) for s in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prompt")
    p.add_argument("--seeds", type=seed_range, default=seed_range("100-119"))
    p.add_argument("--pipelines", default="wave,spec")
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--judge", default=judge_bench.DEFAULT_JUDGE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    judge = judge_bench.load_judge(args.judge)
    knobs = {stage: cascade.Sampling() for stage in cascade.STAGES}       # sample.py with no knob flags
    print(f'"{args.prompt}", seeds {args.seeds[0]}-{args.seeds[-1]} ({len(args.seeds)} clips per pipeline)\n')
    print("| pipeline | " + " | ".join(jm.ATTRIBUTES) + " | floor dB (median) | CPU s per s of audio |")
    print("|---|" + "---|" * (len(jm.ATTRIBUTES) + 2))
    for pipeline in args.pipelines.split(","):
        stages, text_encoder = judge_bench.load_pipeline(args.ckpt_dir, pipeline)
        seconds = stages[cascade.PIPELINES[pipeline][0]].spec.clip_seconds
        clips, start = [], time.process_time()
        for seed in args.seeds:
            audio = cascade.cascade_generate(stages, text_encoder, [args.prompt], pipeline, seconds, seed, knobs)
            clips.append(audio[0].float().numpy())
        per_second = (time.process_time() - start) / (seconds * len(clips))
        heard = judge_bench.hear(judge, clips, RATE)
        cells = []
        for name in jm.ATTRIBUTES:
            counts = collections.Counter(heard[name]).most_common()
            cells.append(", ".join(f"{value} {n}" for value, n in counts))
        floor = np.median([audio_measures.noise_floor_db(c, RATE) for c in clips])
        print(f"| {pipeline} | " + " | ".join(cells) + f" | {floor:.1f} | {per_second:.2f} |")


if __name__ == "__main__":
    main()
