"""Training from a prepared collection: preparation speed and size, training memory, loader speed.

    python bench/data_prepare.py manifests --corpus DIR [--hours 1 50]
    python bench/data_prepare.py prepare --manifest M --out P [--workers 2]
    python bench/data_prepare.py rss --data P [--stage cascader --steps 200]
    python bench/data_prepare.py worker --data P [--batches 8]

`manifests` writes DIR/manifest_<H>h.jsonl over the audio files of a toy corpus rendered at 30 s
(`python data.py toy --out DIR --scale full --clips N --unlabeled 0`), listing the files in order
and, when H hours need more entries than there are files, starting over (an entry per 30 s; a
file listed twice is decoded and stored twice, so it costs preparation and disk as a new one).
`prepare` times `data.py prepare` (hours of audio per minute) and reports the folder's size.
`rss` runs train.py on a prepared folder and samples the resident memory of its process tree
(/proc, every 0.2 s): the peak of the sum over the processes (the training process and its
DataLoader worker; shared pages counted in each) and of the largest one.
`worker` times train.StageBatches on the folder at full scale in this one process, one thread,
as one DataLoader worker runs it: training examples per second per stage (wall clock, and per
second of this process's CPU time: what a worker with a core of its own delivers), against what an
H100 consumes (bench/results_gpu_train_step_h100.txt), hence the workers a GPU needs.
Results: bench/results_data_prepare.md.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Examples per second one H100 consumes at full scale (bench/results_gpu_train_step_h100.txt, the
# batch with the highest rate per stage).
H100_EXAMPLES_PER_S = {"wave-generator": 55.4, "cascader": 103.4, "spec-generator": 280.4, "vocoder": 135.9,
                       "super-res": 72.8}


def manifests(args):
    audio = sorted(f for f in os.listdir(os.path.join(args.corpus, "audio")) if f.endswith((".flac", ".wav")))
    for hours in args.hours:
        n = int(round(hours * 3600 / 30))
        path = os.path.join(args.corpus, f"manifest_{hours:g}h.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                name = audio[i % len(audio)]
                f.write(json.dumps({"audio": f"audio/{name}", "captions": [f"a synthetic folk tune, take {i // len(audio)} of {name[:-5]}"],
                                    "tags": ["toy corpus", "30 s"]}) + "\n")
        print(f"{path}: {n} entries over {min(n, len(audio))} files")


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def prepare(args):
    cmd = [sys.executable, "data.py", "prepare", "--manifest", args.manifest, "--out", args.out,
           "--workers", str(args.workers)]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    minutes = (time.time() - start) / 60
    summary = json.load(open(os.path.join(args.out, "prepare.json")))
    print(f"{summary['hours']:.2f} h in {minutes:.1f} min = {summary['hours'] / minutes:.2f} h of audio per minute "
          f"({args.workers} workers, load average {os.getloadavg()[0]:.1f}); "
          f"{folder_bytes(args.out) / 1e9:.2f} GB on disk ({summary['dtype']}, {summary['rates']} Hz)")


def _tree(root):
    """The pids of `root` and its descendants."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return 0


def rss(args):
    out = args.out or f"/tmp/bench_rss_{os.getpid()}"
    cmd = [sys.executable, "train.py", "--stage", args.stage, "--scale", "toy", "--data", args.data, "--out", out,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--workers", "1", "--eval-every", "0",
           "--ckpt-every", str(args.steps)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_sum = peak_one = 0
    start = time.time()
    while proc.poll() is None:
        sizes = [_rss_kib(p) for p in _tree(proc.pid)]
        peak_sum, peak_one = max(peak_sum, sum(sizes)), max(peak_one, max(sizes, default=0))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"train.py failed ({proc.returncode})")
    hours = json.load(open(os.path.join(args.data, "prepare.json")))["hours"]
    print(f"{args.stage} toy, {args.steps} steps of {args.batch_size}, {hours:.1f} h prepared: peak RSS "
          f"{peak_sum / 2**20:.2f} GiB (training process + worker), largest process {peak_one / 2**20:.2f} GiB, "
          f"{time.time() - start:.0f} s")


def worker(args):
    import numpy as np
    import torch

    import cascade
    import store
    import text
    import train
    torch.set_num_threads(1)                                  # what a DataLoader worker runs with
    tokenizer, _ = text.load_t5(args.t5)
    count_tokens = lambda s: len(tokenizer.sp.encode(s)) + 1  # noqa: E731  (train.py's)
    print(f"{'stage':15s} {'ex/s wall':>10s} {'ex/CPU-s':>9s} {'H100 ex/s':>10s} {'workers (a core each) per H100':>31s}")
    for stage in args.stages:
        spec = cascade.stage_spec(stage, "full")
        clips = store.StoreClips(args.data, spec.sample_rate, spec.clip_seconds)
        batches = train.StageBatches(spec, clips, args.batch_size, seed=1, rank=0, count_tokens=count_tokens)
        batches[0]                                            # warm-up: opens files, builds caches
        start, cpu = time.time(), time.process_time()
        for s in range(1, args.batches + 1):
            batches[s]
        n = args.batches * args.batch_size
        rate, per_cpu = n / (time.time() - start), n / (time.process_time() - cpu)
        need = H100_EXAMPLES_PER_S[stage]
        print(f"{stage:15s} {rate:10.1f} {per_cpu:9.1f} {need:10.1f} {math.ceil(need / per_cpu):31d}")
    print(f"(batch {args.batch_size}, {args.batches} batches per stage, load average {os.getloadavg()[0]:.1f}, "
          f"{np.__name__} {np.__version__}, torch {torch.__version__})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manifests")
    p.add_argument("--corpus", required=True)
    p.add_argument("--hours", type=float, nargs="+", default=[1, 50])
    p = sub.add_parser("prepare")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("rss")
    p.add_argument("--data", required=True)
    p.add_argument("--stage", default="cascader")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="")
    p = sub.add_parser("worker")
    p.add_argument("--data", required=True)
    p.add_argument("--stages", nargs="+", default=["wave-generator", "cascader", "spec-generator", "vocoder", "super-res"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--t5", default=os.path.join(ROOT, "checkpoints/toy/t5"))
    args = parser.parse_args()
    {"manifests": manifests, "prepare": prepare, "rss": rss, "worker": worker}[args.command](args)


if __name__ == "__main__":
    main()
