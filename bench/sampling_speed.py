"""Seconds of computing per second of audio, per stage and path, at one thread; before vs after.

    python bench/sampling_speed.py [--batch 8] [--seconds 4] [--prompts30] [--out bench/results_sampling_speed.md]

For each path (waveform, spectrogram) and each sampler setting ("Table 3's eq. 4": every stage
`--STAGE-sampler ancestral` at the toy preset's step counts before this file's presets moved;
"defaults": the presets as they are), one batch of prompts through the three stages, timed per
stage in CPU seconds of this process (time.process_time, with torch at one thread), divided by
the seconds of audio made (batch x clip length). CPU time rather than wall time because the
machine is shared: other jobs stretch wall time but not, to first order, this process's CPU time
(they still share caches and memory bandwidth, so figures from a busy machine run a little high).

Each stage's FLOPs are counted once on its real shapes (torch.utils.flop_counter, one model call,
times the number of calls), so the table also gives the achieved FLOP/s and its fraction of a plain
Conv1d forward (32 channels, kernel 5, batch 8 x 16,000 samples) timed in the same run, as
bench/unet_speed.py does for training.

--prompts30 also runs `sample.py --prompts FILE` on 30 four-second prompts per path as a child
process, at sample.py's defaults, and reports its wall time and its CPU time (user + system).

--backends times one cascader model call (the CFG batch of one 4 s clip) in float32 under no_grad
and under inference_mode, under bfloat16 autocast, and compiled by torch.compile (after its
compile time), in CPU time of this thread.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cascade  # noqa: E402
import sample  # noqa: E402

# The toy presets' sampling before the second-order sampler: eq. 4 at these step counts.
TABLE3_TOY_STEPS = {"wave-generator": 200, "cascader": 40, "spec-generator": 50, "vocoder": 25, "super-res": 15}
PROMPTS = ["a slow piano tune in a minor key, solo", "a fast guitar tune in a major key with drums",
           "a slow flute melody in a major key, solo", "a fast bass line in a minor key with drums"]


def eq4_knobs():
    return {s: cascade.Sampling(sampler="ancestral", steps=n) for s, n in TABLE3_TOY_STEPS.items()}


def default_steps(stage):
    return len(cascade.resolve_sampling(cascade.stage_spec(stage), cascade.Sampling())[0])


def default_knobs():
    return {s: cascade.Sampling() for s in cascade.STAGES}


class CountingStage:
    """A StageModel whose model calls are counted and, once, FLOP-counted (per call)."""

    def __init__(self, stage):
        self.stage, self.calls, self.flops_per_call = stage, 0, None
        self.spec, self.device, self.dtype, self.t5 = stage.spec, stage.device, stage.dtype, stage.t5
        model = stage.model

        class Wrapped(nn.Module):
            def __init__(w):
                super().__init__()
                w.inner, w.config = model, model.config

            def forward(w, *a, **kw):
                self.calls += 1
                if self.flops_per_call is None:
                    counter = FlopCounterMode(display=False)
                    with counter:
                        out = w.inner(*a, **kw)
                    self.flops_per_call = counter.get_total_flops()
                    return out
                return w.inner(*a, **kw)
        self.model = Wrapped()

    def eps_fn(self, *a, **kw):
        return cascade.StageModel.eps_fn(self, *a, **kw)


def run_path(stages, encoder, pipeline, knobs, batch, seconds, seed=0):
    """{stage: (cpu seconds, model FLOPs)} for one batch through `pipeline`'s three stages."""
    names = cascade.PIPELINES[pipeline]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    gen = torch.Generator().manual_seed(seed)
    counted = {n: CountingStage(stages[n]) for n in names}
    out, clock = {}, time.process_time()

    def lap(name):
        nonlocal clock
        now = time.process_time()
        c = counted[name]
        out[name] = (now - clock, c.calls * (c.flops_per_call or 0))
        clock = now

    with torch.inference_mode():
        first, second, third = (counted[n] for n in names)
        x1 = cascade.first_stage(first, encoder, prompts, seconds, knobs[names[0]], gen)
        lap(names[0])
        x2 = cascade.second_stage(second, first.spec, x1, encoder, prompts, seconds, knobs[names[1]], gen)
        lap(names[1])
        cascade.third_stage(third, x2, seconds, knobs[names[2]], gen)
        lap(names[2])
    return out


def conv_reference_rate(repeats=5):
    """FLOP/s of a plain Conv1d forward (32 channels, kernel 5, batch 8 x 16,000), CPU time."""
    conv = nn.Conv1d(32, 32, 5, padding=2)
    x = torch.randn(8, 32, 16000)
    with torch.inference_mode():
        conv(x)
        counter = FlopCounterMode(display=False)
        with counter:
            conv(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            conv(x)
            best = min(best, time.process_time() - t0)
    return counter.get_total_flops() / best


def backends(ckpt_dir, repeats=3):
    """Lines: CPU seconds of one cascader call (batch 2 = CFG of one clip, 4 s at 16 kHz) per way of running it."""
    stage = cascade.StageModel(os.path.join(ckpt_dir, "cascader.pt"), stage="cascader")
    m, B, T = stage.model, 2, 64000
    x, t = torch.randn(B, 1, T), torch.rand(B)
    kw = dict(cond=0.1 * torch.randn(B, 1, T), text=torch.randn(B, stage.spec.token_len, m.config.text_dim),
              text_mask=torch.ones(B, stage.spec.token_len, dtype=torch.bool), aug_t=torch.zeros(B))

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return min(times)
    lines = []
    with torch.no_grad():
        lines.append(f"| float32, no_grad | {best(lambda: m(x, t, **kw)):.3f} |")
    with torch.inference_mode():
        lines.append(f"| float32, inference_mode | {best(lambda: m(x, t, **kw)):.3f} |")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lines.append(f"| bfloat16 autocast, inference_mode | {best(lambda: m(x, t, **kw)):.3f} |")
    compiled = torch.compile(m, dynamic=False)
    with torch.no_grad():
        t0 = time.process_time()
        compiled(x, t, **kw)
        lines.append(f"| torch.compile, no_grad (compiling took {time.process_time() - t0:.0f} s CPU) | "
                     f"{best(lambda: compiled(x, t, **kw)):.3f} |")
    return lines


def prompts30(ckpt_dir, pipeline, out_dir):
    """(wall s, CPU s) of sample.py on 30 four-second prompts, as a child process."""
    path = os.path.join(out_dir, "prompts.txt")
    with open(path, "w") as f:
        f.write("\n".join(PROMPTS[i % len(PROMPTS)] for i in range(30)) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--prompts", path, "--out-dir",
                    os.path.join(out_dir, pipeline), "--pipeline", pipeline, "--ckpt-dir", ckpt_dir, "--seconds", "4"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--pipelines", default="wave,spec")
    p.add_argument("--settings", default="eq4,defaults", help="which of eq4 (Table 3's eq. 4, before) and defaults")
    p.add_argument("--prompts30", action="store_true", help="also time sample.py on 30 four-second prompts per path")
    p.add_argument("--backends", action="store_true", help="also time one cascader call in bfloat16 and compiled")
    p.add_argument("--out", default=None, help="also write the report here")
    args = p.parse_args()
    torch.set_num_threads(1)
    ref = conv_reference_rate()
    lines = [f"torch {torch.__version__}, 1 thread, batch {args.batch} x {args.seconds:g} s; plain Conv1d forward "
             f"reference {ref / 1e9:.1f} GFLOP/s (CPU time)", "",
             "| path | sampling | per stage: CPU s per s of audio (GFLOP/s, fraction of the Conv1d) | total |",
             "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    settings = {"eq4": ("eq. 4 (ancestral), Table 3's toy steps " + "/".join(str(v) for v in TABLE3_TOY_STEPS.values()),
                        eq4_knobs()),
                "defaults": ("defaults: " + ", ".join(f"{s} {cascade.stage_spec(s).sampler} {default_steps(s)}"
                                                      for s in cascade.STAGES), default_knobs())}
    for pipeline in args.pipelines.split(","):
        stages, encoder = sample.load_models(argparse.Namespace(pipeline=pipeline, ckpt_dir=args.ckpt_dir),
                                             argparse.ArgumentParser(), torch.device("cpu"))
        for key in args.settings.split(","):
            label, knobs = settings[key]
            result = run_path(stages, encoder, pipeline, knobs, args.batch, args.seconds)
            audio = args.batch * args.seconds
            cells = [f"{n} {cpu / audio:.3f} ({flops / cpu / 1e9:.1f}, {flops / cpu / ref:.2f})"
                     for n, (cpu, flops) in result.items()]
            total = sum(cpu for cpu, _ in result.values()) / audio
            lines.append(f"| {pipeline} | {label} | " + ", ".join(cells) + f" | {total:.3f} |")
            print(lines[-1], flush=True)
    if args.prompts30:
        lines += ["", "sample.py --prompts (30 four-second prompts, --batch-size 8, defaults), a child process:", "",
                  "| path | wall s | CPU s (user + system) |", "|---|---|---|"]
        with tempfile.TemporaryDirectory() as tmp:
            for pipeline in args.pipelines.split(","):
                wall, cpu = prompts30(args.ckpt_dir, pipeline, tmp)
                lines.append(f"| {pipeline} | {wall:.0f} | {cpu:.0f} |")
                print(lines[-1], flush=True)
    if args.backends:
        lines += ["", "One cascader model call, CPU s (batch 2 x 64,000 samples):", "", "| how | s |", "|---|---|"]
        lines += backends(args.ckpt_dir)
        print("\n".join(lines[-4:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
