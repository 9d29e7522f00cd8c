"""How long `python train.py --stage all` takes on this machine, by its stages' times.

    python bench/stage_times.py [--steps 80] [--stages wave-generator,...] [--out DIR]

Each toy stage trains for --steps steps at one thread, as `--stage all` runs it (its preset batch,
one DataLoader worker); the rate between the first and last log line (so without start-up and
warm-up) times the preset's step count is the stage's minutes. The text encoder (the MuLan-style
model's text tower) is taken from its recorded training time in checkpoints/toy/mulan.pt. Then each
chain of train.CHAINS is summed: the chains train side by side, one core each, so the longer sum is
the wall time of `--stage all` (plus building the corpora, about two minutes, and the export).
Run it with the other core free, as `--stage all` would have it, or say what else ran.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
import train  # noqa: E402


def stage_minutes(stage, steps, out):
    """Minutes the preset's step count takes, at the rate of a --steps run after its first log line."""
    data = train.TOY_STEREO_DATA if stage == "stereo" else train.TOY_DATA
    if not os.path.exists(os.path.join(data, "manifest.jsonl")):
        train.build_toy_corpus(stereo=stage == "stereo")
    every = max(1, steps // 4)
    train.main(["--stage", stage, "--steps", str(steps), "--out", out, "--eval-every", "0",
                "--log-every", str(every)])
    with open(os.path.join(out, f"{stage}.log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    seconds_per_step = (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])
    return seconds_per_step, cascade.stage_spec(stage, "toy").train_steps * seconds_per_step / 60


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="steps timed per stage (at least 8)")
    parser.add_argument("--stages", default=",".join(s for chain in train.CHAINS for s in chain if s != "text"),
                        help="comma-separated stages to time (default: all of train.CHAINS)")
    parser.add_argument("--out", default=None, help="keep the short runs here (default: a temp dir)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in cascade.STAGES]
    if unknown or args.steps < 8:
        parser.error(f"unknown stage {unknown[0]}" if unknown else "--steps must be at least 8")
    torch.set_num_threads(1)
    out = args.out or tempfile.mkdtemp(prefix="stage_times_")
    minutes = {}
    mulan = torch.load(os.path.join(os.path.dirname(train.TOY_T5), "mulan.pt"), weights_only=False)
    minutes["text"] = mulan["metrics"]["train_seconds"] / 60
    lines = ["| stage | s per step | preset steps | minutes |", "|---|---|---|---|",
             f"| text (recorded in mulan.pt) | - | {mulan['metrics']['steps']} | {minutes['text']:.1f} |"]
    for stage in stages:
        per_step, minutes[stage] = stage_minutes(stage, args.steps, os.path.join(out, stage))
        lines.append(f"| {stage} | {per_step:.3f} | {cascade.stage_spec(stage, 'toy').train_steps} | {minutes[stage]:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "| chain (side by side, one core each) | minutes |", "|---|---|"]
    for chain in train.CHAINS:
        timed = [s for s in chain if s in minutes]
        note = "" if len(timed) == len(chain) else " (not all timed)"
        lines.append(f"| {' -> '.join(chain)} | {sum(minutes[s] for s in timed):.0f}{note} |")
    print("\n".join(lines))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
