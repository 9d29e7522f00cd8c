"""Regenerate RESULTS.md: every table in it, with the command that made it and its wall time.

    python bench/results.py [--out RESULTS.md] [--work runs/results] [--corpus toy_data/corpus]
    python bench/results.py --quick --out /tmp/RESULTS.md     # a smoke run: minutes, numbers meaningless

Runs one part after the other, each on one CPU thread (OMP_NUM_THREADS=1), with the shipped toy
checkpoints at their default settings:
  1. prompt adherence, output sanity and speed: `python bench/adherence.py --seed S`, S = 0, 1, 2;
  2. what each audio-to-audio stage does to real clips' onsets: `python bench/stage_tempo.py`;
  3. Tables 5 and 6: `python evaluate.py results`;
  4. fidelity as classifiers trained on real clips hear it: `python bench/judge.py generate`, then
     `score` (the judge is trained first, ~10 min, unless --work holds it).
Each part writes its own Markdown into --work; RESULTS.md is those files, one section each, under
the commands and the wall time of the run that made them. The toy corpus is built first if missing.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cascade import STAGES  # noqa: E402

INTRO = """# Results at toy scale

Every figure below was made by the current code and the shipped checkpoints (`checkpoints/toy`), at
their default settings, by the command above its table. `python bench/results.py` runs them all and
writes this file{timing}.

Prompt adherence: pairs of prompts that differ in one vocabulary word ("a fast piano tune ..." / "a slow
piano tune ..."), 20 pairs per kind, each clip with its own noise; a pair counts as right when the audio
measurement (`audio_measures.py`) orders it the right way: onset rate fast > slow, median pitch flute >
bass, percussive ratio drums > solo. The measurement itself is checked first on real toy-corpus clips.
"""


def parts(args):
    """[(title, [commands], output file)]; a command writing to stdout has its output captured there."""
    py, work = sys.executable, args.work
    quick_pairs = ["--pairs", "2"] + [f"--{s}-steps=2" for s in STAGES] if args.quick else []
    quick_eval = ["--n", "2", "--refs", "2", "--steps", "2"] if args.quick else []
    quick_judge = (["--every", "10", "--seeds", "0"] + [f"--{s}-steps=2" for s in STAGES]) if args.quick else []
    judged = os.path.join(work, "judge_eval.pt")
    out = [(f"Prompt adherence, seed {s}",
            [[py, "bench/adherence.py", "--seed", str(s), "--corpus", args.corpus, *quick_pairs,
              "--out", os.path.join(work, f"adherence_{s}.md")]], os.path.join(work, f"adherence_{s}.md"))
           for s in (0, 1, 2)]
    out.append(("Each audio-to-audio stage on real clips: fast / slow pairs kept",
                [[py, "bench/stage_tempo.py", "--corpus", args.corpus] + (["--clips", "2"] if args.quick else [])],
                os.path.join(work, "stage_tempo.md")))
    out.append(("Tables 5 and 6", [[py, "evaluate.py", "results", "--corpus", args.corpus, "--threads", "1",
                                    *quick_eval, "--out", os.path.join(work, "tables56")]],
                os.path.join(work, "tables56", "results.md")))
    out.append(("Fidelity judged by classifiers trained on real clips",
                [[py, "bench/judge.py", "generate", "--set", "eval", *quick_judge, "--out", judged],
                 [py, "bench/judge.py", "score", judged, "--judge", os.path.join(work, "judge.pt"),
                  *(["--train-clips", "60", "--heldout-clips", "20", "--copies", "1"] if args.quick else []),
                  "--out", os.path.join(work, "judge.md")]],
                os.path.join(work, "judge.md")))
    return out


def run_part(commands, output):
    """Run the commands in turn (stdout to `output` unless a command writes it itself); their wall minutes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    for command in commands:
        writes_itself = "--out" in command
        with open(os.devnull if writes_itself else output, "w") as sink:
            done = subprocess.run(command, cwd=ROOT, env=env, stdout=sink)
        if done.returncode != 0:
            raise SystemExit(f"bench/results.py: `{' '.join(command)}` failed (exit {done.returncode})")
    return (time.time() - start) / 60


def demote(markdown):
    """Headings one level down, so each part sits under its own section."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


def shown(command):
    """The command as a reader types it: `python ...`, paths relative to the repository."""
    inside = lambda c: os.path.isabs(c) and os.path.commonpath([c, ROOT]) == ROOT
    return " ".join(["python"] + [os.path.relpath(c, ROOT) if inside(c) else c for c in command[1:]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "RESULTS.md"), help="file to write")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "results"), help="folder for each part's output")
    p.add_argument("--corpus", default="toy_data/corpus", help="the toy corpus (built here if missing)")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script, not the model")
    args = p.parse_args(argv)
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    if not os.path.isfile(os.path.join(ROOT, args.corpus, "manifest.jsonl")):
        run_part([[sys.executable, "data.py", "toy", "--out", args.corpus]], os.devnull)
    sections, total = [], 0.0
    for title, commands, output in parts(args):
        minutes = run_part(commands, output)
        total += minutes
        print(f"{title}: {minutes:.1f} min", file=sys.stderr, flush=True)
        with open(output) as f:
            body = demote(f.read())
        typed = " then ".join(f"`{shown(c)}`" for c in commands)
        sections.append(f"## {title}\n\n{typed} ({minutes:.1f} min, one thread)\n\n{body}\n")
    timing = f" (this run: {total:.0f} minutes of wall time, one thread)"
    with open(args.out, "w") as f:
        f.write(INTRO.format(timing=timing) + "\n" + "\n".join(sections))
    print(f"wrote {args.out} in {total:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
