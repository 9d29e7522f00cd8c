"""Prompt adherence, output sanity and speed of the shipped toy cascade.

    python bench/adherence.py [--ckpt-dir checkpoints/toy] [--pairs 20] [--pipelines wave,spec]
                              [--corpus toy_data/corpus] [--out bench/results_adherence.md]
                              [--from-real 10] [sample.py's --STAGE-FIELD knobs, e.g. --cascader-gamma 0]
                              [--save-audio FILE] [--rescore FILE]

1. The analyzer (audio_measures.py: onset rate, median pitch, percussive ratio) is first checked on the
   toy corpus's real clips: --pairs random clips of each word (fast/slow, flute/bass, drums/solo),
   all pairs of them.
2. For each pipeline, prompt pairs that differ in one vocabulary word (toy_corpus.py) are
   generated (each clip with its own noise), and a pair counts as ordered correctly when the measurement
   puts them the right way round: onset rate fast > slow, pitch bass < flute, percussive ratio
   drums > solo. Target: at least 90% of pairs per kind. The first two stages' outputs are scored
   too (the spectrogram generator's through data.griffin_lim, checked in step 1 on real clips'
   log-mels), to show which stage loses the prompt.
3. Every output is checked: finite, not silent, < 0.1% of samples clipped, of the requested length.
4. Speed: seconds of computing per second of audio, per stage and in total.
`--save-audio FILE` keeps the generated clips; `--rescore FILE` scores them again (with the same --pairs)
without generating, e.g. after a change to the analyzer.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import audio_measures  # noqa: E402
import cascade  # noqa: E402
import data  # noqa: E402
import sample  # noqa: E402

INSTRUMENTS = ("piano", "guitar", "organ")
KINDS = {  # kind: (measurement, word that should measure higher, word that should measure lower)
    "tempo": ("onset_rate", "fast", "slow"),
    "register": ("median_pitch", "flute", "bass"),
    "drums": ("percussive_ratio", "drums", "solo"),
}


def measure(kind, wave, rate):
    fn = getattr(audio_measures, KINDS[kind][0])
    return float(fn(np.asarray(wave, dtype=np.float64), rate))


def prompt_pairs(n):
    """n pairs per kind, differing in one vocabulary word; the rest cycles through the others."""
    pairs = {k: [] for k in KINDS}
    for i in range(n):
        inst, mode = INSTRUMENTS[i % 3], ("major", "minor")[i // 3 % 2]
        tempo = ("slow", "fast")[i % 2]
        drums = ("with drums", "solo")[i // 2 % 2]
        pairs["tempo"].append((f"a fast {inst} tune in a {mode} key, {drums}",
                               f"a slow {inst} tune in a {mode} key, {drums}"))
        pairs["register"].append((f"a {tempo} flute melody in a {mode} key, {drums}",
                                  f"a {tempo} bass line in a {mode} key, {drums}"))
        pairs["drums"].append((f"a {tempo} {inst} tune in a {mode} key with drums",
                               f"a {tempo} {inst} tune in a {mode} key, solo"))
    return pairs


def fresh_prompt_pairs(n):
    """Like `prompt_pairs`, in other phrasings (and another cycle of the other words): for checking
    settings that were chosen on `prompt_pairs`, on prompts that took no part in choosing them."""
    pairs = {k: [] for k in KINDS}
    for i in range(n):
        inst, mode = INSTRUMENTS[(i + 1) % 3], ("minor", "major")[i // 2 % 2]
        tempo = ("slow", "fast")[(i + 1) % 2]
        drums = ("played solo", "over drums")[i // 3 % 2]
        pairs["tempo"].append((f"{inst} music at a fast tempo, {mode} mode, {drums}",
                               f"{inst} music at a slow tempo, {mode} mode, {drums}"))
        pairs["register"].append((f"{mode} mode flute music, {tempo}, {drums}",
                                  f"{mode} mode bass music, {tempo}, {drums}"))
        pairs["drums"].append((f"{tempo} {mode} {inst} piece with drums",
                               f"{tempo} {mode} {inst} piece, solo"))
    return pairs


# The corpus attribute behind each kind: (attribute, value of the higher word, of the lower word)
ATTRIBUTES = {"tempo": ("tempo", "fast", "slow"), "register": ("instrument", "flute", "bass"), "drums": ("drums", True, False)}


def real_groups(corpus):
    """{kind: (clips of the higher word, clips of the lower word)}: the corpus manifest's entries."""
    entries = data.read_manifest(os.path.join(corpus, "manifest.jsonl"))
    return {kind: tuple([e for e in entries if e["attributes"].get(key) == v] for v in (hi, lo))
            for kind, (key, hi, lo) in ATTRIBUTES.items()}


def check_analyzer(corpus, n, rng, hiss=0.0, griffin_lim=False):
    """Share of real-clip pairs the analyzer orders correctly, per kind: n random clips of each
    word, all n x n pairs of them.

    hiss > 0 adds white noise of that RMS to every clip (the clips' RMS is 0.1); griffin_lim
    replaces each clip by data.griffin_lim of its log-mel (at 16 kHz).
    """
    def load(entry):
        wave, rate = data.decode_audio(entry["audio"])
        wave = wave + hiss * rng.standard_normal(len(wave))
        if griffin_lim:
            spec = data.log_mel(torch.tensor(wave, dtype=torch.float32), rate)
            wave, rate = data.griffin_lim(spec).numpy(), data.MEL_SAMPLE_RATE
        return wave, rate

    result = {}
    for kind, (hi, lo) in real_groups(corpus).items():
        a, b = ([measure(kind, *load(pool[i])) for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
                for pool in (hi, lo))
        result[kind] = float((np.array(a)[:, None] > np.array(b)[None, :]).mean())
    return result


def load_clip(entry, rate, samples):
    """A corpus clip FFT-resampled to `rate`, zero-padded or cut to `samples`: float32 [samples]."""
    wave, r = data.decode_audio(entry["audio"])
    wave = data.fft_resample(torch.tensor(wave, dtype=torch.float64), r, rate).float()
    return torch.nn.functional.pad(wave, (0, max(0, samples - len(wave))))[:samples]


def real_pairs(corpus, n, rng):
    """n random real-clip pairs per kind, in pair_scores' order: (clips at 16 kHz, their first captions)."""
    groups = real_groups(corpus)
    clips, captions = [], []
    for kind in KINDS:
        pools = groups[kind]
        for _ in range(n):
            for pool in pools:
                e = pool[rng.integers(len(pool))]
                clips.append(load_clip(e, 16000, 64000))
                captions.append(e["captions"][0])
    return torch.stack(clips)[:, None], captions


def second_stage_from_real(args, pipeline, n):
    """The cascader (from real 3.2 kHz audio) or the vocoder (from real log-mels): pair scores at 16 kHz."""
    sys_args = argparse.Namespace(pipeline=pipeline, ckpt_dir=args.ckpt_dir)
    stages, (tokenizer, encoder) = sample.load_models(sys_args, argparse.ArgumentParser(), torch.device("cpu"))
    name = cascade.PIPELINES[pipeline][1]
    stage = stages[name]
    clips, captions = real_pairs(args.corpus, n, np.random.default_rng(args.seed + 1))
    waves = []
    for start in range(0, len(clips), args.batch):
        c, gen = clips[start:start + args.batch], torch.Generator().manual_seed(args.seed + start)
        with torch.no_grad():
            if stage.spec.aligned:
                x = cascade.run_stage(stage, cascade.Sampling(), c.shape, gen, aligned=data.log_mel(c[:, 0], 16000))
            else:
                ids, mask = tokenizer(captions[start:start + args.batch], stage.spec.token_len)
                x = cascade.run_stage(stage, cascade.Sampling(), c.shape, gen, encoder(ids, mask), mask,
                                      cond=cascade.low_fidelity(c.double(), 16000, 3200).float())
        waves += [w[0].numpy() for w in x]
    return {f"  {name} from real inputs (16000 Hz)": pair_scores(waves, 16000, {k: [None] * n for k in KINDS})}


def pair_scores(waves, rate, pairs):
    """{kind: share of pairs ordered correctly}; waves in the order of run_pipeline's prompts."""
    scores, i = {}, 0
    for kind in KINDS:
        ok = []
        for _ in pairs[kind]:
            ok.append(measure(kind, waves[i], rate) > measure(kind, waves[i + 1], rate))
            i += 2
        scores[kind] = float(np.mean(ok))
    return scores


def sanity(wave, seconds):
    wave = np.asarray(wave)
    return {"finite": bool(np.isfinite(wave).all()), "not_silent": float(np.abs(wave).max()) > 1e-3,
            "clipped": float((np.abs(wave) >= 0.999).mean()), "length_ok": len(wave) == round(seconds * 24000)}


def run_pipeline(args, pipeline, pairs):
    sys_args = argparse.Namespace(pipeline=pipeline, ckpt_dir=args.ckpt_dir)
    stages, text_encoder = sample.load_models(sys_args, argparse.ArgumentParser(), torch.device("cpu"))
    knobs = args.knobs
    prompts = [p for kind in KINDS for pair in pairs[kind] for p in pair]
    seconds = stages[cascade.PIPELINES[pipeline][0]].spec.clip_seconds
    waves, timings, stage_waves = [], {}, {}
    t0 = time.perf_counter()
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start:start + args.batch]
        keep = {}
        audio = cascade.cascade_generate(stages, text_encoder, batch, pipeline, seconds, args.seed + start, knobs,
                                         timings=timings, keep=keep)
        waves += [w.numpy() for w in audio]
        for name, x in keep.items():             # the first two stages' outputs
            if name == "super-res":
                continue
            spec = stages[name].spec
            if spec.output == "spec":                # the log-mel, heard through Griffin-Lim
                row, rate, x = f"{name} output, Griffin-Lim", data.MEL_SAMPLE_RATE, data.griffin_lim(x)[:, None]
            else:
                row, rate = f"{name} output", spec.sample_rate
            stage_waves.setdefault((row, rate), []).extend(w[0].numpy() for w in x)
        print(f"  {pipeline}: {len(waves)}/{len(prompts)} clips, {time.perf_counter() - t0:.0f} s", flush=True)
    audio_seconds = seconds * len(prompts)
    speed = {k: v / audio_seconds for k, v in timings.items()}
    return {"seconds": seconds, "final": waves, "stages": stage_waves}, speed


def score_audio(pipeline, audio, pairs):
    """Pair scores of a pipeline's 24 kHz output and of its first two stages' outputs, and sanity checks."""
    results = {f"{pipeline} (24 kHz)": pair_scores(audio["final"], 24000, pairs)}
    for (row, rate), ws in audio["stages"].items():
        results[f"  {row} ({rate} Hz)"] = pair_scores(ws, rate, pairs)
    return results, [sanity(w, audio["seconds"]) for w in audio["final"]]


def save_audio(path, audio):
    """{pipeline: generated audio} as float32 tensors, for --rescore (float16 could tip a borderline pitch)."""
    stack = lambda ws: torch.from_numpy(np.stack(ws).astype(np.float32))
    torch.save({p: {"seconds": a["seconds"], "final": stack(a["final"]),
                    "stages": {key: stack(ws) for key, ws in a["stages"].items()}} for p, a in audio.items()}, path)


def load_audio(path):
    """The inverse of `save_audio`: each stacked array back to a list of clips. Read with
    weights_only=True (tensors and plain containers only), so a crafted file cannot run code."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = ("it holds objects other than tensors and plain data" if "weights_only" in str(e).lower()
               else (str(e).splitlines() or [""])[0][:120])
        raise ValueError(f"{path}: not audio stored by --save-audio ({why})") from None
    clips = lambda stacked: [np.asarray(w) for w in stacked.numpy()]
    return {p: {"seconds": a["seconds"], "final": clips(a["final"]),
                "stages": {key: clips(ws) for key, ws in a["stages"].items()}} for p, a in saved.items()}


def main():
    p = argparse.ArgumentParser(description="Prompt adherence, sanity and speed of the toy cascade.")
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--corpus", default="toy_data/corpus")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--pipelines", default="wave,spec")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="the other phrasings (fresh_prompt_pairs), for a check on "
                   "prompts not used to choose settings")
    p.add_argument("--out", default="bench/results_adherence.md")
    p.add_argument("--from-real", type=int, default=0,
                   help="also run the cascader / vocoder on this many real pairs per kind (their own fidelity)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--save-audio", metavar="FILE", help="also store the generated audio here")
    p.add_argument("--rescore", metavar="FILE", help="score audio stored by --save-audio instead of generating "
                   "(the same --pairs; to try another analyzer)")
    sample.add_knob_flags(p)                     # sample.py's --STAGE-FIELD knobs, default Table 3
    args = p.parse_args()
    args.knobs = sample.read_knobs(args, p)
    if args.rescore and not os.path.isfile(args.rescore):
        p.error(f"--rescore {args.rescore}: no such file")
    moved = [f"--{stage}-{name} {value:g}" if isinstance(value, float) else f"--{stage}-{name} {value}"
             for stage, knob in args.knobs.items() for name, value in vars(knob).items() if value is not None]
    torch.set_num_threads(args.threads)
    lines = [f"# Prompt adherence of {args.ckpt_dir} ({args.pairs} pairs per kind"
             + (", fresh phrasings" if args.fresh else "") + f", seed {args.seed})", ""]
    if moved:
        lines += ["Sampling knobs off Table 3's defaults: " + " ".join(moved), ""]
    if os.path.isdir(args.corpus):
        real = check_analyzer(args.corpus, args.pairs, np.random.default_rng(args.seed))
        noisy = check_analyzer(args.corpus, args.pairs, np.random.default_rng(args.seed), hiss=0.01)
        rendered = check_analyzer(args.corpus, args.pairs, np.random.default_rng(args.seed), griffin_lim=True)
        lines += [f"Analyzer on real toy-corpus clips ({args.pairs} random clips of each word, all {args.pairs}x{args.pairs} pairs; "
                  "clips at RMS 0.1, hiss = white noise of RMS 0.01 added;",
                  "Griffin-Lim = the clip's log-mel rendered by data.griffin_lim):", "",
                  "| kind | ordered correctly | with hiss | Griffin-Lim of the log-mel |", "|---|---|---|---|"]
        lines += [f"| {k} ({KINDS[k][1]} vs {KINDS[k][2]}) | {v:.0%} | {noisy[k]:.0%} | {rendered[k]:.0%} |"
                  for k, v in real.items()] + [""]
    pairs = (fresh_prompt_pairs if args.fresh else prompt_pairs)(args.pairs)
    lines += ["Generated pairs (one word changed; each clip its own noise):", "", "| pipeline | " + " | ".join(
        f"{k} ({KINDS[k][1]} vs {KINDS[k][2]})" for k in KINDS) + " | finite | not silent | max clipped | length ok |",
        "|---" * (len(KINDS) + 5) + "|"]
    try:
        speeds, generated = [], load_audio(args.rescore) if args.rescore else {}
    except ValueError as e:
        p.error(str(e))
    for pipeline in args.pipelines.split(","):
        if args.rescore:
            if pipeline not in generated:
                p.error(f"--rescore {args.rescore} holds no {pipeline} audio")
            if len(generated[pipeline]["final"]) != 2 * len(KINDS) * args.pairs:
                p.error(f"--rescore {args.rescore} holds {len(generated[pipeline]['final'])} {pipeline} clips, "
                        f"not {2 * len(KINDS) * args.pairs} (--pairs {args.pairs})")
            speed = {}
        else:
            generated[pipeline], speed = run_pipeline(args, pipeline, pairs)
        results, checks = score_audio(pipeline, generated[pipeline], pairs)
        if args.from_real and os.path.isdir(args.corpus):
            results.update(second_stage_from_real(args, pipeline, args.from_real))
        for row, scores in results.items():
            print(f"  {row}: " + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()), flush=True)
            sane = (f" | {all(c['finite'] for c in checks)} | {all(c['not_silent'] for c in checks)}"
                    f" | {max(c['clipped'] for c in checks):.4%} | {all(c['length_ok'] for c in checks)} |"
                    if row.startswith(pipeline) else " | | | | |")
            lines.append(f"| {row} | " + " | ".join(f"{scores[k]:.0%}" for k in KINDS) + sane)
        if speed:
            speeds.append((pipeline, speed))
    if args.save_audio:
        save_audio(args.save_audio, generated)
    if args.from_real:
        lines += ["", f"Rows 'from real inputs': the second stage alone on {args.from_real} random pairs of real clips "
                  "per kind (the cascader on the clip taken down to 3.2 kHz, with its first caption; the vocoder on "
                  "the clip's log-mel)."]
    if speeds:
        lines += ["", "Seconds of computing per second of audio (this CPU, default steps, batch "
                  f"{args.batch}, {torch.get_num_threads()} threads):", "", "| pipeline | per stage | total |",
                  "|---|---|---|"]
    for pipeline, speed in speeds:
        lines.append(f"| {pipeline} | " + ", ".join(f"{k} {v:.2f}" for k, v in speed.items())
                     + f" | {sum(speed.values()):.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    with open(args.out, "w") as f:
        f.write(report)


if __name__ == "__main__":
    main()
