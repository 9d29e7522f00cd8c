"""Does the toy vocoder still need the mel projection when trained far longer? (GPU)

    python bench/gpu_vocoder.py [--minutes 4] [--batch 256] [--variants preset,dilated] [--pairs 20]
                                [--extra NAME=CKPT] [--out runs/gpu_vocoder] [--device cuda]

The shipped toy vocoder is trained for 6000 steps of 16 clips on a CPU and samples with the mel
projection (cascade.py, the vocoder preset's `project`); unprojected it renders flute as noise. This trains each
variant of it with train.py's own loop (`train.train_stage`, the toy recipe: lr 1e-3, 100 warm-up
steps, cosine to the last step, EMA 0.999), all at once on one GPU, each in its own process, for
about --minutes (the step count is set from the speed of a first timed 60 steps), then measures
every vocoder, the shipped checkpoint included, the same way: --pairs held-out pairs per kind of
real clips (toy_corpus draws that differ in tempo, instrument flute/bass or drums/solo), vocoded
from their log-mels, unprojected (project 1, the paper's vocoder) and projected (0, the shipped
default), scored as bench/adherence.py scores pairs, at the vocoder's own 16 kHz output; and the
mean absolute log-mel error of the output against its input (the log-mel's range is [-1, 1]).

The training clips are the toy corpus's 2000 captioned clips, rendered in memory with the draws
`python data.py toy` makes (seed 0) and FFT-resampled to 16 kHz, so the GPU machine needs neither
the corpus files nor soundfile. Variants: `preset` (the toy preset, as shipped) and `dilated` (strides 2, 2,
8, 5 with dilations (2, 2, 1, 1) at its 8 and 4 kHz depths, session 8's trial; cascade.py).
Everything lands in --out: a markdown table (gpu_vocoder.md), each variant's run folder (its
checkpoint loads with cascade.StageModel and sample.py --ckpt-dir) and each process's log.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import soundfile  # noqa: F401
except ImportError:            # the GPU machine's image has no soundfile; no audio file is read or written
    sys.modules["soundfile"] = types.ModuleType("soundfile")
import adherence  # noqa: E402
import cascade  # noqa: E402
import data  # noqa: E402
import toy_corpus  # noqa: E402
import train  # noqa: E402

STAGE = "vocoder"
VARIANTS = {"preset": {}, "dilated": {"strides": (2, 2, 8, 5), "dilation": (2, 2, 1, 1)}}
EVAL_ATTRS = {"tempo": ("tempo", "fast", "slow"), "register": ("instrument", "flute", "bass"),
              "drums": ("drums", True, False)}      # the same order as adherence.KINDS


def _render(job):
    """One clip at 16 kHz: job = (rng seed keys, fixed attributes)."""
    keys, fixed = job
    rng = np.random.default_rng(keys)
    tunes = _render.tunes
    tune = tunes[int(rng.integers(len(tunes)))]
    attrs = toy_corpus.draw_attributes(rng, tune, 4.0, **fixed)
    audio, _ = toy_corpus.render_clip(tune, attrs, rng)
    wave = data.fft_resample(audio.astype(np.float64), toy_corpus.SAMPLE_RATE, 16000)
    return np.pad(wave, (0, max(0, 64000 - len(wave))))[:64000].astype(np.float32), attrs


def render(jobs, workers):
    import multiprocessing

    _render.tunes = toy_corpus.load_tunes()
    # one thread per process: 16 processes of 16 torch threads each took 149 s for 2000 clips, 5 s this way
    with multiprocessing.get_context("fork").Pool(workers, torch.set_num_threads, (1,)) as pool:
        return pool.map(_render, jobs, chunksize=16)


def training_clips(n, workers):
    """The toy corpus's first n captioned clips (make_clip's draws, seed 0) at 16 kHz."""
    return render([([0, 1, i], {}) for i in range(n)], workers)


def eval_pairs(n, workers):
    """[2 * n * 3] clips at 16 kHz in adherence.pair_scores' order (higher word first), seed 1."""
    jobs = []
    for k, (kind, (attr, hi, lo)) in enumerate(EVAL_ATTRS.items()):
        assert kind == list(adherence.KINDS)[k]
        for i in range(n):
            jobs += [([1, k, i, 0], {attr: hi}), ([1, k, i, 1], {attr: lo})]
    return torch.from_numpy(np.stack([w for w, _ in render(jobs, workers)]))


def use_clips(path):
    """Point train.py's clip loader at clips stored by `main` (a .pt of float16 waves)."""
    waves = torch.load(path).float().numpy()
    clips = [({"audio": f"rendered_{i}"}, w) for i, w in enumerate(waves)]
    train.load_stage_clips = lambda cfg, spec: (clips, path)


def train_variant(args):
    """Child process: calibrate the speed, then train one variant for about --minutes."""
    torch.set_num_threads(2)
    use_clips(args.data)
    unet = cascade.PRESETS[STAGE]["unet"]
    unet["toy"] = dataclasses.replace(unet["toy"], **VARIANTS[args.variant])
    base = dict(stage=STAGE, batch_size=args.batch, workers=args.workers, eval_every=0, device=args.device)
    probe = tempfile.mkdtemp(prefix=f"probe_{args.variant}_")
    train.train_stage(train.TrainConfig(out=probe, steps=60, log_every=60, ckpt_every=10**9, **base), STAGE)
    with open(os.path.join(probe, f"{STAGE}.log.jsonl")) as f:
        rate = json.loads(f.readlines()[-1])["steps_per_s"]
    steps = max(200, int(args.minutes * 60 * rate))
    print(f"{args.variant}: {rate:.1f} steps/s in the probe -> {steps} steps", flush=True)
    result = train.train_stage(train.TrainConfig(out=args.out, steps=steps, log_every=500, ckpt_every=1000, **base),
                               STAGE)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(dict(result, batch=args.batch), f)


@torch.no_grad()
def score(stage, clips, project, device, batch=64):
    """Pair scores and mean |log-mel error| of the vocoder on real clips' log-mels."""
    waves, errors = [], []
    for s in range(0, len(clips), batch):
        c = clips[s:s + batch, None].to(device)
        mel = data.log_mel(c[:, 0], 16000)
        x = cascade.run_stage(stage, cascade.Sampling(project=project), c.shape,
                              torch.Generator().manual_seed(s), aligned=mel)
        errors.append((data.log_mel(x[:, 0].float(), 16000) - mel).abs().mean(dim=(1, 2)).cpu())
        waves += [w[0].float().cpu().numpy() for w in x]
    n = len(clips) // 6
    scores = adherence.pair_scores(waves, 16000, {k: [None] * n for k in adherence.KINDS})
    return scores, float(torch.cat(errors).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=4.0, help="training time per variant (all run at once)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--variants", default="preset,dilated", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--clips", type=int, default=2000, help="training clips (the corpus's first N)")
    p.add_argument("--pairs", type=int, default=20, help="held-out real pairs per kind")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per variant")
    p.add_argument("--render-workers", type=int, default=os.cpu_count())
    p.add_argument("--shipped", default=os.path.join(ROOT, "checkpoints/toy/vocoder.pt"))
    p.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                   help="also measure this vocoder checkpoint (e.g. one an earlier run trained)")
    p.add_argument("--out", default="runs/gpu_vocoder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-variant", dest="variant", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return train_variant(args)
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    clips = training_clips(args.clips, args.render_workers)
    path = os.path.join(tempfile.mkdtemp(prefix="gpu_vocoder_"), "clips16k.pt")
    torch.save(torch.from_numpy(np.stack([w for w, _ in clips])).half(), path)
    del clips
    print(f"{args.clips} training clips rendered in {time.time() - t0:.0f} s", flush=True)
    procs = {}
    for v in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--train-variant", v, "--data", path,
               "--out", os.path.join(args.out, v), "--minutes", str(args.minutes), "--batch", str(args.batch),
               "--workers", str(args.workers), "--device", args.device]
        procs[v] = subprocess.Popen(cmd, stdout=open(os.path.join(args.out, f"{v}.log"), "w"),
                                    stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    clips = eval_pairs(args.pairs, args.render_workers)
    device = torch.device(args.device)
    rows = []

    def report(name, stage, trained):
        cells = [name, trained]
        for project in (1.0, 0.0):
            scores, err = score(stage, clips, project, device)
            cells += [f"{scores[k]:.0%}" for k in adherence.KINDS] + [f"{err:.3f}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)

    report("shipped checkpoint", cascade.StageModel(args.shipped, device), "16 x 6000 (CPU)")
    for item in args.extra:
        name, ckpt = item.split("=", 1)
        stage = cascade.StageModel(ckpt, device)
        report(name, stage, f"step {stage.step} (--extra)")
    for v, proc in procs.items():
        if proc.wait() != 0:
            rows.append(f"| {v} | failed (exit {proc.returncode}; {v}.log) |")
            continue
        with open(os.path.join(args.out, v, "result.json")) as f:
            r = json.load(f)
        report(v, cascade.StageModel(os.path.join(args.out, v, f"{STAGE}.pt"), device),
               f"{r['batch']} x {r['steps']} ({r['seconds'] / 60:.1f} min, loss {r['final_loss']:.4f})")
    os.remove(path)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    table = [f"Toy vocoder from real log-mels, {args.pairs} held-out pairs per kind, at its 16 kHz output, on {name}:",
             "", "| vocoder | trained (batch x steps) | tempo | register | drums | log-mel err | "
             "tempo (projected) | register (projected) | drums (projected) | log-mel err (projected) |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows]
    with open(os.path.join(args.out, "gpu_vocoder.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table), flush=True)


if __name__ == "__main__":
    main()
