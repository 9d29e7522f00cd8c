"""Train every toy stage at once on one GPU, longer and on larger batches than the CPU presets.

    python bench/gpu_toy_cascade.py --minutes 5.5 --out runs/gpu_toy [--t5 mulan=checkpoints/toy/t5]
                                    [--t5 text=DIR] [--variants NAME,...] [--device cuda] [--pack DIR]

Each variant is one stage trained by train.py's own loop (`train.train_stage`: the toy recipe, lr 1e-3,
100 warm-up steps, cosine to the last step, EMA 0.999) in its own process, all at once, on the toy
corpus (built on first use, as train.py does). A variant first times 60 steps, then sets its step count
so that it ends by the shared deadline (--minutes after the start; ten variants at once on one H200 timed
5-6 steps/s each while all were starting and then ran 8-15, ending up to three minutes early: run
fewer at once, or give a later --minutes); its log, loss curve and checkpoint
land in OUT/VARIANT/. The stages that read text are trained once per encoder given with --t5
(`wave-generator@text` is the wave generator conditioned on the encoder named `text`). With --pack,
every variant's inference export (EMA in float16, train.export_inference) is written there as
tar files of at most 16 MiB, with the logs; the wave generator of the last --t5 also keeps its EMA at a
quarter, a half and three quarters of its run (`stepN/wave-generator.pt`, exported as the final one is), for a
curve of quality against training time.

The CPU equivalent of a variant is `python train.py --stage STAGE --batch-size B --steps N [--t5 DIR]`
with its B and N from OUT/VARIANT/result.json (a variant with a `unet` change also needs that change
in cascade.PRESETS).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cascade  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402

# name -> stage, batch, U-Net changes and other preset changes from the toy preset
COSINE = cascade.shifted("cosine")
VARIANTS = {
    "wave-generator": dict(stage="wave-generator", batch=64),
    "spec-generator": dict(stage="spec-generator", batch=64),
    # 4.0M params (fp16 export 8 MB: the shipped set stays under 20 MiB); 96 channels carry the 80 mel
    # channels' fine detail through every level of the toy U-Net, which loses a note's pitch at low noise
    "spec-generator-wide": dict(stage="spec-generator", batch=64, unet=dict(base_dim=128)),
    "cascader": dict(stage="cascader", batch=64),
    "cascader-wide": dict(stage="cascader", batch=64, unet=dict(base_dim=32)),
    "vocoder": dict(stage="vocoder", batch=128),
    "super-res": dict(stage="super-res", batch=64),
    "cascader-cosine": dict(stage="cascader", batch=64, preset=dict(schedule=COSINE)),
    "vocoder-cosine": dict(stage="vocoder", batch=128, preset=dict(schedule=COSINE)),
    "super-res-cosine": dict(stage="super-res", batch=64, preset=dict(schedule=COSINE)),
}
SNAPSHOT_STAGE = "wave-generator"


def expand(names, encoders):
    """[(variant name, base variant, encoder name or None)]: text stages once per encoder."""
    out = []
    for name in names:
        if cascade.stage_spec(VARIANTS[name]["stage"]).has_text:
            out += [(f"{name}@{enc}", name, enc) for enc in encoders]
        else:
            out.append((name, name, None))
    return out


def train_child(args):
    """One variant: time --probe-steps steps, then train until the deadline."""
    torch.set_num_threads(1)
    v = VARIANTS[args.base]
    stage = v["stage"]
    if v.get("unet"):
        unet = cascade.PRESETS[stage]["unet"]
        unet["toy"] = dataclasses.replace(unet["toy"], **v["unet"])
    for key, value in v.get("preset", {}).items():
        cascade.PRESETS[stage][key]["toy"] = value
    base = dict(stage=stage, batch_size=v["batch"], workers=args.workers, eval_every=0, device=args.device,
                t5=args.t5_path or "")
    probe = tempfile.mkdtemp(prefix=f"probe_{args.child}_")
    t0 = time.time()
    third = max(1, args.probe_steps // 3)
    train.train_stage(train.TrainConfig(out=probe, steps=3 * third, log_every=third, ckpt_every=10**9, **base), stage)
    with open(os.path.join(probe, f"{stage}.log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    # the rate over the probe's last two thirds: its first steps also start the loader and the kernels
    rate = (rows[-1]["step"] - rows[0]["step"]) / max(1e-9, rows[-1]["time"] - rows[0]["time"])
    left = args.deadline - time.time() - 10           # start-up of the real run, the last checkpoint
    steps = max(args.min_steps, int(0.9 * left * rate))
    print(f"{args.child}: probe {rate:.2f} steps/s ({time.time() - t0:.0f} s with loading) -> {steps} steps",
          flush=True)
    if args.snapshots:
        steps -= steps % 4
    marks = {steps * k // 4 for k in (1, 2, 3)} if args.snapshots else set()
    save = train.save_checkpoint

    def save_and_keep(cfg, stage_, step, *rest):
        save(cfg, stage_, step, *rest)
        if step in marks:            # the inference export of the checkpoint just written, kept
            train.export_inference(cfg.out, os.path.join(cfg.out, f"step{step}"), stages=[stage_])

    train.save_checkpoint = save_and_keep
    every = steps // 4 if marks else 500
    result = train.train_stage(train.TrainConfig(out=args.out, steps=steps, log_every=100, ckpt_every=every,
                                                 **base), stage)
    result.update(batch=v["batch"], probe_steps_per_s=rate, t5=args.t5_path or "", unet=v.get("unet", {}),
                  preset=v.get("preset", {}))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


def pack(out, variants, dest, limit=16 * 2**20):
    """Inference exports and logs of every finished variant, as tar files of at most `limit` bytes."""
    os.makedirs(dest, exist_ok=True)
    files = []
    for name, base, enc in variants:
        run = os.path.join(out, name)
        stage = VARIANTS[base]["stage"]
        if not os.path.exists(os.path.join(run, f"{stage}.pt")):
            continue
        export = os.path.join(run, "export")
        train.export_inference(run, export, stages=[stage])
        files.append((os.path.join(export, f"{stage}.pt"), f"{name}/{stage}.pt"))
        for extra in sorted(os.listdir(run)):
            if extra.startswith("step"):                     # the quarter snapshots, stepN/STAGE.pt
                files.append((os.path.join(run, extra, f"{stage}.pt"), f"{name}/{extra}/{stage}.pt"))
            elif extra.endswith((".log.jsonl", ".json", ".log")):
                files.append((os.path.join(run, extra), f"{name}/{extra}"))
    for log in sorted(os.listdir(out)):
        if log.endswith(".log"):
            files.append((os.path.join(out, log), log))
    groups = [[]]
    for path, arc in sorted(files, key=lambda f: -os.path.getsize(f[0])):
        for g in groups:         # first fit, largest first
            if sum(os.path.getsize(p) for p, _ in g) + os.path.getsize(path) < limit - 2**20:
                g.append((path, arc))
                break
        else:
            groups.append([(path, arc)])
    for i, g in enumerate(groups):
        with tarfile.open(os.path.join(dest, f"gpu_toy_{i}.tar"), "w") as tar:
            for path, arc in g:
                tar.add(path, arcname=arc)
    return len(groups)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.5, help="wall time from the start to the shared deadline")
    p.add_argument("--variants", default="wave-generator,spec-generator,cascader,cascader-wide,vocoder,super-res",
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--t5", action="append", default=[], metavar="NAME=DIR",
                   help="a text encoder for the text stages (default: mulan=checkpoints/toy/t5)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per variant")
    p.add_argument("--out", default="runs/gpu_toy")
    p.add_argument("--pack", default="", help="write the exports and logs here as tar files")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--probe-steps", type=int, default=60, help="steps timed before a variant's run")
    p.add_argument("--min-steps", type=int, default=200, help="the fewest steps a variant trains")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--t5-path", help=argparse.SUPPRESS)
    p.add_argument("--snapshots", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return train_child(args)
    start = time.time()
    deadline = start + args.minutes * 60
    names = args.variants.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        p.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    encoders = dict(item.split("=", 1) for item in args.t5) or {"mulan": train.TOY_T5}
    for enc, path in encoders.items():
        if not os.path.isdir(path):
            p.error(f"--t5 {enc}={path}: no such directory")
    if not os.path.exists(os.path.join(train.TOY_DATA, "manifest.jsonl")):
        data.main(["toy", "--out", train.TOY_DATA, "--workers", str(os.cpu_count())])
    print(f"corpus ready at {time.time() - start:.0f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    variants = expand(names, encoders)
    procs = {}
    for name, base, enc in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--base", base, "--deadline", str(deadline),
               "--out", os.path.join(args.out, name), "--workers", str(args.workers), "--device", args.device,
               "--probe-steps", str(args.probe_steps), "--min-steps", str(args.min_steps)]
        cmd += ["--t5-path", os.path.abspath(encoders[enc])] if enc else []
        cmd += ["--snapshots"] if base == SNAPSHOT_STAGE and enc == list(encoders)[-1] else []
        procs[name] = subprocess.Popen(cmd, stdout=open(os.path.join(args.out, f"{name}.log"), "w"),
                                       stderr=subprocess.STDOUT,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1, deadline + 60 - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"{name}: still running at the deadline; killed (its last checkpoint is kept)", flush=True)
        print(f"{name}: exit {proc.returncode}", flush=True)
    for name, _, _ in variants:
        path = os.path.join(args.out, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                print(name, f.read(), flush=True)
    if args.pack:
        print(f"packed into {pack(args.out, variants, args.pack)} tar files", flush=True)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
