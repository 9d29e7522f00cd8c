"""The stereo super-res stage (cascade.PRESETS["stereo"], not in the paper): placement, mono
compatibility, adherence, size and speed.

    python bench/stereo.py [--ckpt-dir checkpoints/toy] [--heldout toy_data/stereo_heldout]
                           [--clips 40] [--pairs 6] [--out bench/results_stereo.md]

1. Placement, on held-out stereo toy clips (`python data.py toy --stereo --seed 1 --clips 60
   --unlabeled 0 --out toy_data/stereo_heldout`; the stage trained on seed 0): each clip's 16 kHz
   mono mix-down goes through the stereo stage alone, and the output's inter-channel level
   difference (ILD, dB, + = louder on the left) and inter-channel correlation are set against the
   real clip's, per instrument (each instrument has its own pan position, toy_corpus.STEREO_PANS):
   does a hard-left flute come out left?
2. Mono compatibility: the mix-down (L + R) / 2 of every output against its mid (the same by
   construction; measured), the mix-down's level against the 16 kHz input's, and the level lost
   to cancellation when mixing down (`mixdown_loss_db`: 0 dB for panned sources, 3 dB for
   uncorrelated channels).
3. Adherence: bench/adherence.py's prompt pairs (onset rate fast > slow, pitch flute > bass,
   percussive ratio drums > solo) through the whole cascade, `--stereo` mixed down against mono,
   at the same seeds (the first two stages are shared, so only the last stage differs).
4. Size (parameters, checkpoint bytes) and sampling time per second of audio of the stereo stage
   against the mono super-res, on the same 16 kHz inputs.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
import data  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Measures of a stereo clip: (2, T) float arrays, left then right

def _rms(x):
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64))))) + 1e-12


def ild_db(stereo):
    """Inter-channel level difference, dB: 20 log10(rms L / rms R); positive = louder on the left."""
    return 20 * np.log10(_rms(stereo[0]) / _rms(stereo[1]))


def correlation(stereo):
    """Inter-channel correlation at lag 0: <L, R> / (|L| |R|), in [-1, 1] (1 = mono, 0 = unrelated)."""
    left, right = (np.asarray(c, dtype=np.float64) for c in stereo)
    return float(np.dot(left, right) / (np.linalg.norm(left) * np.linalg.norm(right) + 1e-12))


def mixdown_loss_db(stereo):
    """Level lost to cancellation when mixing down: 20 log10(mean channel rms / rms((L + R) / 2)).

    0 dB when the channels are one signal at two gains (panning), 3 dB for uncorrelated channels
    of equal level, growing without bound as R approaches -L.
    """
    return 20 * np.log10((_rms(stereo[0]) + _rms(stereo[1])) / 2 / _rms((stereo[0] + stereo[1]) / 2))


def level_db(x, reference):
    """20 log10(rms x / rms reference)."""
    return 20 * np.log10(_rms(x) / _rms(reference))


# ------------------------------------------------------------------------------------------------
# 1 and 2: placement and mono compatibility on held-out real stereo clips

def load_heldout(folder, n):
    """[(attributes, (2, T) float32 left/right at 24 kHz)] of the first n clips of a stereo toy corpus."""
    entries = data.read_manifest(os.path.join(folder, "manifest.jsonl"))[:n]
    return [(e["attributes"], data.load_track(e["audio"], 24000, channels=2)) for e in entries]


def upmix(stage, mono16, seed):
    """The stereo stage alone on (B, T) 16 kHz mono: ((B, 2, T') left/right at 24 kHz, (B, T') the
    mid it made)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ms = cascade.third_stage(stage, mono16[:, None], mono16.shape[-1] / 16000, cascade.Sampling(), gen)
    return cascade.final_audio(ms).numpy(), ms[:, 0].numpy()


def placement(stage, clips, batch, seed):
    """Per clip: the real clip's and the output's ILD, correlation and mix-down loss, and the output's
    mono compatibility (mix-down against mid, and against the 16 kHz input)."""
    rows = []
    for start in range(0, len(clips), batch):
        chunk = clips[start:start + batch]
        real = np.stack([c for _, c in chunk])                                  # (B, 2, T)
        mono16 = data.fft_resample(torch.from_numpy(real.mean(axis=1).astype(np.float64)), 24000, 16000).float()
        out, mid = upmix(stage, mono16, seed + start)
        given = data.fft_resample(mono16.double(), 16000, 24000).numpy()      # the input, up-sampled
        for k, (attrs, clip) in enumerate(chunk):
            o = out[k]
            rows.append({"instrument": attrs["instrument"], "pan": attrs["pan"], "drums": attrs["drums"],
                         "ild_real": ild_db(clip), "ild_out": ild_db(o), "corr_real": correlation(clip),
                         "corr_out": correlation(o), "loss_real": mixdown_loss_db(clip), "loss_out": mixdown_loss_db(o),
                         "mixdown_vs_mid": float(np.abs((o[0] + o[1]) / 2 - mid[k]).max()),
                         "mixdown_vs_input_db": level_db((o[0] + o[1]) / 2, given[k])})
        print(f"  placement: {len(rows)}/{len(clips)} clips", flush=True)
    return rows


def placement_table(rows):
    lines = ["| instrument (pan) | clips | ILD real | ILD out | same side | corr real | corr out |"
             " mix-down loss real | mix-down loss out |", "|---" * 9 + "|"]
    groups = sorted({r["instrument"] for r in rows}, key=lambda i: min(r["pan"] for r in rows if r["instrument"] == i))
    for name in groups + ["all"]:
        g = [r for r in rows if name in ("all", r["instrument"])]
        mean = lambda k: float(np.mean([r[k] for r in g]))
        sided = [r for r in g if abs(r["ild_real"]) > 1.0]
        same = (f"{np.mean([np.sign(r['ild_out']) == np.sign(r['ild_real']) for r in sided]):.0%} of {len(sided)}"
                if sided else "-")
        pan = f"{mean('pan'):+.2f}" if name != "all" else "all"
        lines.append(f"| {name} ({pan}) | {len(g)} | {mean('ild_real'):+.1f} dB | {mean('ild_out'):+.1f} dB | {same} |"
                     f" {mean('corr_real'):.2f} | {mean('corr_out'):.2f} | {mean('loss_real'):.2f} dB |"
                     f" {mean('loss_out'):.2f} dB |")
    return lines


# ------------------------------------------------------------------------------------------------
# 3: adherence, --stereo mixed down against mono at the same seeds

def adherence(args, pipeline, n_pairs):
    """bench/adherence.py's pair scores of the mono output and of the stereo output's mix-down; the
    first two stages run once and both last stages start from the same generator state, so each
    output is what sample.py (with or without --stereo) makes at that seed."""
    import adherence as adh
    names = cascade.PIPELINES[pipeline]
    stages = {n: cascade.StageModel(os.path.join(args.ckpt_dir, f"{n}.pt"), stage=n) for n in names + (cascade.STEREO,)}
    import text
    encoder = text.load_t5(stages[names[0]].t5)
    pairs = adh.prompt_pairs(n_pairs)
    prompts = [p for kind in adh.KINDS for pair in pairs[kind] for p in pair]
    seconds = stages[names[0]].spec.clip_seconds
    knobs = {s: cascade.Sampling() for s in cascade.STAGES}
    mono, stereo = [], []
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start:start + args.batch]
        gen = torch.Generator().manual_seed(args.seed + start)
        with torch.no_grad():
            x1 = cascade.first_stage(stages[names[0]], encoder, batch, seconds, knobs[names[0]], gen)
            x2 = cascade.second_stage(stages[names[1]], stages[names[0]].spec, x1, encoder, batch, seconds,
                                      knobs[names[1]], gen)
            state = gen.get_state()
            mono += list(cascade.final_audio(cascade.third_stage(stages[names[2]], x2, seconds, knobs[names[2]], gen)).numpy())
            gen.set_state(state)
            lr = cascade.final_audio(cascade.third_stage(stages["stereo"], x2, seconds, knobs["stereo"], gen)).numpy()
            stereo += [w.mean(axis=0) for w in lr]
        print(f"  adherence {pipeline}: {len(mono)}/{len(prompts)} prompts", flush=True)
    return adh.pair_scores(mono, 24000, pairs), adh.pair_scores(stereo, 24000, pairs), mono, stereo


# ------------------------------------------------------------------------------------------------
# 4: size and sampling time against the mono super-res

def sizes(ckpt_dir):
    rows = []
    for name in ("super-res", cascade.STEREO):
        counts = []
        for scale in cascade.SCALES:
            with torch.device("meta"):
                counts.append(cascade.count_parameters(cascade.UNet1D(cascade.unet_config(name, scale))))
        path = os.path.join(ckpt_dir, f"{name}.pt")
        rows.append((name, counts, os.path.getsize(path) if os.path.exists(path) else 0))
    return rows


def timing(ckpt_dir, seconds, reps, seed):
    """Median seconds of computing per second of audio of each last stage, on the same 16 kHz input
    (batch 1, default steps), the two stages alternating so that both see the same machine load."""
    stages = {n: cascade.StageModel(os.path.join(ckpt_dir, f"{n}.pt"), stage=n) for n in ("super-res", cascade.STEREO)}
    mono16 = 0.1 * torch.randn(1, round(seconds * 16000), generator=torch.Generator().manual_seed(seed))
    times = {n: [] for n in stages}
    for _ in range(reps):
        for name, stage in stages.items():
            gen = torch.Generator().manual_seed(seed)
            clock = time.perf_counter()
            with torch.no_grad():
                cascade.third_stage(stage, mono16[:, None], seconds, cascade.Sampling(), gen)
            times[name].append((time.perf_counter() - clock) / seconds)
    return {n: float(np.median(t)) for n, t in times.items()}


def main():
    p = argparse.ArgumentParser(description="The stereo super-res stage: placement, mono compatibility, adherence, "
                                "size and speed.")
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--heldout", default="toy_data/stereo_heldout", help="a stereo toy corpus the stage did not train on")
    p.add_argument("--clips", type=int, default=40, help="held-out clips for placement")
    p.add_argument("--pairs", type=int, default=4, help="adherence prompt pairs per kind (0: skip)")
    p.add_argument("--pipelines", default="spec,wave", help="pipelines for adherence")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="timing repetitions")
    p.add_argument("--out", default="bench/results_stereo.md")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.heldout, "manifest.jsonl")):
        p.error(f"--heldout {args.heldout}: no manifest (python data.py toy --stereo --seed 1 --clips 60 "
                f"--unlabeled 0 --out {args.heldout})")
    if not os.path.isfile(os.path.join(args.ckpt_dir, "stereo.pt")):
        p.error(f"no {args.ckpt_dir}/stereo.pt (python train.py --stage stereo)")
    torch.set_num_threads(1)
    stage = cascade.StageModel(os.path.join(args.ckpt_dir, "stereo.pt"), stage=cascade.STEREO)
    command = "python bench/stereo.py " + " ".join(sys.argv[1:])
    lines = [f"# The stereo super-res stage ({args.ckpt_dir}/stereo.pt, step {stage.step})", "",
             f"`{command.strip()}`; held-out clips: {args.heldout} (seed 1; the stage trained on seed 0).", ""]

    rows = placement(stage, load_heldout(args.heldout, args.clips), args.batch, args.seed)
    ild = np.array([[r["ild_real"], r["ild_out"]] for r in rows])
    lines += ["## Placement: each held-out clip's 16 kHz mono mix-down through the stereo stage", "",
              "ILD = 20 log10(rms L / rms R), + = left; same side = the output's ILD has the real clip's sign, "
              "over clips whose real |ILD| > 1 dB; corr = inter-channel correlation at lag 0; mix-down loss = "
              "level lost to cancellation in (L + R) / 2 (0 dB panned, 3 dB uncorrelated). A mono output "
              "copied to both channels would score ILD 0 dB, corr 1.00, loss 0 dB.", ""]
    lines += placement_table(rows)
    lines += ["", f"Across all {len(rows)} clips: Pearson r of output vs real ILD {np.corrcoef(ild.T)[0, 1]:.2f}, "
              f"mean |ILD error| {np.mean(np.abs(ild[:, 1] - ild[:, 0])):.1f} dB.", "",
              "## Mono compatibility", "",
              f"- mix-down (L + R) / 2 of the written left/right against the mid the stage made: max |difference| "
              f"{max(r['mixdown_vs_mid'] for r in rows):.1e} (float32 rounding: equal by construction)",
              f"- mix-down level against the 16 kHz input (up-sampled): mean "
              f"{np.mean([r['mixdown_vs_input_db'] for r in rows]):+.3f} dB, range "
              f"[{min(r['mixdown_vs_input_db'] for r in rows):+.3f}, {max(r['mixdown_vs_input_db'] for r in rows):+.3f}] dB "
              f"(target: within 1 dB)",
              f"- level lost to cancellation when mixing down: mean {np.mean([r['loss_out'] for r in rows]):.2f} dB, "
              f"max {max(r['loss_out'] for r in rows):.2f} dB (real clips: mean "
              f"{np.mean([r['loss_real'] for r in rows]):.2f}, max {max(r['loss_real'] for r in rows):.2f} dB; target: "
              "at most 1 dB)", ""]
    print("\n".join(lines[-6:]), flush=True)

    if args.pairs:
        import adherence as adh
        lines += ["## Adherence: `--stereo` mixed down against mono, the same prompts and seeds", "",
                  f"bench/adherence.py's prompt pairs ({args.pairs} per kind), seed {args.seed}, batch {args.batch}; "
                  "the share of pairs the measure orders the right way round.", "",
                  "| pipeline | output | " + " | ".join(f"{k} ({adh.KINDS[k][1]} vs {adh.KINDS[k][2]})" for k in adh.KINDS)
                  + " | max abs(mix-down - mono) |", "|---" * (len(adh.KINDS) + 3) + "|"]
        for pipeline in args.pipelines.split(","):
            mono_scores, stereo_scores, mono, stereo = adherence(args, pipeline, args.pairs)
            diff = max(float(np.abs(m - s).max()) for m, s in zip(mono, stereo))
            for label, scores in (("mono", mono_scores), ("--stereo, mixed down", stereo_scores)):
                lines.append(f"| {pipeline} | {label} | " + " | ".join(f"{scores[k]:.0%}" for k in adh.KINDS)
                             + (f" | {diff:.3f} |" if label != "mono" else " | |"))
            print("\n".join(lines[-2:]), flush=True)
        lines.append("")

    lines += ["## Size and sampling time against the mono super-res", "",
              "| stage | params toy | small | full | shipped checkpoint | s of computing per s of audio (toy, batch 1) |",
              "|---|---|---|---|---|---|"]
    speed = timing(args.ckpt_dir, 4.0, args.reps, args.seed)
    for name, counts, size in sizes(args.ckpt_dir):
        lines.append(f"| {name} | " + " | ".join(f"{c / 1e6:.3f}M" if c < 1e7 else f"{c / 1e6:.1f}M" for c in counts)
                     + f" | {size / 1024:.0f} KiB | {speed[name]:.3f} |")
        lines[-1] = lines[-1].replace(f"{counts[0] / 1e6:.3f}M", f"{counts[0]:,}", 1)
    lines += ["", f"Median of {args.reps} runs on a 4 s input, one thread, the two stages alternating (a shared "
              "CPU: other jobs ran beside it).", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[-8:]))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
