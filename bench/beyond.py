"""Audio in: long-form, continuation, inpainting, audio-to-audio and up-sampling, measured.

    python bench/beyond.py [--pipeline spec] [--parts tune,long,long-judged,continue,inpaint,init,upsample,frames]
                           [--long-seconds 30] [--long-pairs 20] [--pairs 20] [--a2a-clips 20]
                           [--strengths 0.2,0.4,0.6,0.8,1.0] [--upsample-clips 20] [--out bench/results_beyond.md]

Each part writes a section of --out (the command line heads the file):
- tune: the settings (long-form overlap; RePaint jump j and resamplings r) are chosen on prompts and
  seeds of their own (seeds from 1000), by the seam at the generator's window joins; every later
  part reports on fresh seeds (from 0) with the chosen settings.
- long: prompt pairs of one changed vocabulary word (bench/adherence.py's), each generated --long-
  seconds long; every 4 s window of the 24 kHz output is scored like a 4 s clip (pair ordered right
  by evaluate.py's onset rate / median pitch / percussive ratio); the seam: spectral flux (mean
  absolute log-mel frame difference, 100 fps) at the joins of the generator's windows against the
  same statistic inside windows (at least 0.3 s from a join); wall time per second of audio.
- long-judged: prompts of a judge set (--long-set, every tempo x instrument x drums x mode phrased
  afresh), each generated --long-seconds long; the judge hears each 4 s window's tempo, instrument,
  drums and mode, against 4 s clips of the same prompts and seeds; the seam as above.
- continue / inpaint: pairs of real toy-corpus clips (toy_corpus.py renders them) that differ in one
  attribute; the prompt names the clip's other attributes only, so the generated part can get the
  measured one only from the given audio. Pair right = the generated parts measure the right way
  round, as the given clips do; judge agrees = the judge hears the given clip's own value in the
  generated part. Also: the largest change of the known part (float), the seam, and the known-region
  samplers of --known-methods (replacement, RePaint, reconstruction guidance) side by side.
- init (SDEdit): a real clip and a prompt that changes one attribute; an output takes it when the
  judge (bench/judge.py's classifiers, trained on real clips) hears the prompted value, and keeps the
  others when it hears the clip's own values of them; a curve over strength.
- upsample: real clips taken down to 3.2 kHz (cascader + super-res) and to 16 kHz (super-res alone)
  and restored to 24 kHz; log-spectral distance to the real 24 kHz clip against FFT up-sampling, per
  band (the given band, which the stages keep, apart from the bands they make).
- frames: why register pairs fail on bass with drums (the share of frames whose pitch reads high),
  real clips against generated 4 s clips and long-form windows.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adherence  # noqa: E402
import audio_measures  # noqa: E402
import cascade  # noqa: E402
import data  # noqa: E402
import judge as judge_bench  # noqa: E402
import pseudolabel  # noqa: E402
import sample  # noqa: E402
import toy_corpus  # noqa: E402

RATE = 24000
WINDOW = 4.0            # seconds of each scored window (the toy clips' length)
REPAINT = (2, 3)        # RePaint's (jump, r) where the tuned setting is plain replacement
TUNE_SEED = 1000        # settings are chosen on seeds from here; results are reported on seeds from 0


# ------------------------------------------------------------------------------------------------
# Measurements

def frame_flux(wave, rate=RATE):
    """Spectral flux per 10 ms frame: mean |difference| of consecutive log-mel frames (values in [-1, 1])."""
    mel = data.log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32)), rate)     # (80, F)
    return np.concatenate([[0.0], (mel[:, 1:] - mel[:, :-1]).abs().mean(0).numpy()])


def seam_stats(wave, joins, rate=RATE, reach=2, away=0.3, step=0.25):
    """(flux at each join, flux at points inside windows): the largest frame flux within `reach`
    frames of the point; inside points lie on a `step` grid at least `away` s from any join and end."""
    flux = frame_flux(wave, rate)
    at = lambda sec: float(flux[max(round(sec * 100) - reach, 1):round(sec * 100) + reach + 1].max())
    seconds = len(wave) / rate
    inside = [s for s in np.arange(away, seconds - away, step) if all(abs(s - j) >= away for j in joins)]
    return [at(j) for j in joins], [at(s) for s in inside]


def seam_row(name, at_joins, inside):
    """A table row: both distributions' quartiles, and the share of joins within the inside range."""
    q = lambda v: "/".join(f"{x:.3f}" for x in np.percentile(v, [0, 25, 50, 75, 100])) if len(v) else "-"
    p95 = np.percentile(inside, 95) if inside else float("nan")
    within = np.mean([j <= max(inside) for j in at_joins]) if at_joins and inside else float("nan")
    below95 = np.mean([j <= p95 for j in at_joins]) if at_joins and inside else float("nan")
    return f"| {name} | {len(at_joins)} | {q(at_joins)} | {len(inside)} | {q(inside)} | {within:.0%} | {below95:.0%} |"


SEAM_HEADER = ["| run | joins | flux at joins (min/25%/median/75%/max) | inside points | flux inside (min/25%/median/75%/max) "
               "| joins <= inside max | joins <= inside 95th pct |", "|---|---|---|---|---|---|---|"]


def power_spectrogram(wave, n_fft=2048, hop=512):
    """|STFT|^2 of a 24 kHz clip: (bins, frames), Hann window."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.stft(torch.as_tensor(np.asarray(wave), dtype=torch.float64), n_fft, hop, window=window,
                      return_complex=True).abs() ** 2


def band_bins(band, n_fft=2048):
    """Bool (bins,): the STFT bins in [band[0], band[1]) Hz."""
    f = torch.fft.rfftfreq(n_fft, 1 / RATE)
    return (f >= band[0]) & (f < band[1])


def log_spectral_distance(x, ref, band=(0.0, RATE / 2 + 1), floor_db=-80.0):
    """LSD (dB) in `band` (Hz): the RMS over its bins of the log-power difference, averaged over frames;
    powers floored at floor_db under the reference's loudest bin (an 80 dB range)."""
    a, b = power_spectrogram(x), power_spectrogram(ref)
    floor = float(b.max()) * 10 ** (floor_db / 10)
    d = 10 * torch.log10(a.clamp(min=floor)) - 10 * torch.log10(b.clamp(min=floor))
    return float(d[band_bins(band)].pow(2).mean(0).sqrt().mean())


def band_level(x, ref, band):
    """10 log10 of x's energy in `band` over ref's (dB; floored 80 dB under ref's whole energy)."""
    a, b = power_spectrogram(x), power_spectrogram(ref)
    floor = float(b.sum()) * 1e-8
    return float(10 * np.log10((float(a[band_bins(band)].sum()) + floor) / (float(b[band_bins(band)].sum()) + floor)))


def measure(kind, wave, rate=RATE):
    return adherence.measure(kind, wave, rate)


# ------------------------------------------------------------------------------------------------
# Real toy-corpus clips

class Corpus:
    """Clips rendered on demand by toy_corpus.py with chosen attributes (flute / bass, slow / fast, drums / solo)."""

    def __init__(self, seed):
        self.tunes = toy_corpus.load_tunes()
        self.rng = np.random.default_rng(seed)

    def clip(self, seconds, tempo, instrument, drums):
        tune = self.tunes[int(self.rng.integers(len(self.tunes)))]
        attrs = toy_corpus.draw_attributes(self.rng, tune, seconds, tempo=tempo, instrument=instrument, drums=drums)
        audio, _ = toy_corpus.render_clip(tune, attrs, self.rng)
        return audio.astype(np.float32), attrs


def prompt_for(attrs, leave_out=None):
    """A prompt in the corpus's vocabulary for a clip's attributes, without the word of kind `leave_out`."""
    what = {"flute": "flute melody", "bass": "bass line"}.get(attrs["instrument"], f"{attrs['instrument']} tune")
    if leave_out == "register":
        what = "melody"
    tempo = "" if leave_out == "tempo" or not attrs["tempo"] else attrs["tempo"] + " "
    drums = "" if leave_out == "drums" else (", with drums" if attrs["drums"] else ", solo")
    return f"a {tempo}{what} in a {attrs['mode']} key{drums}"


KIND_ATTR = {"tempo": ("tempo", "fast", "slow"), "register": ("instrument", "flute", "bass"), "drums": ("drums", True, False)}
JUDGED = ("tempo", "instrument", "drums", "mode")     # the attributes the judge hears (long-judged)


def real_pairs(corpus, n, seconds):
    """{kind: [(clip of the higher word, attrs), (clip of the lower word, attrs)] * n}; other attributes drawn."""
    pairs = {}
    for kind, (key, hi, lo) in KIND_ATTR.items():
        pairs[kind] = []
        for i in range(n):
            base = dict(tempo=("slow", "fast")[i % 2], instrument=("flute", "bass")[i // 2 % 2], drums=bool(i // 4 % 2))
            pairs[kind].append(tuple(corpus.clip(seconds, **{**base, key: v}) for v in (hi, lo)))
    return pairs


# ------------------------------------------------------------------------------------------------
# Running the cascade

DEVICE = torch.device("cpu")


def load(pipeline, ckpt_dir):
    ns = argparse.Namespace(pipeline=pipeline, ckpt_dir=ckpt_dir)
    return sample.load_models(ns, argparse.ArgumentParser(), DEVICE)


FIRST_ONLY = False      # --first-stage: score the generator's output alone (log-mels through Griffin-Lim)
KNOWN_ERR = [0.0]       # with --first-stage: the largest change of the known part of the generator's output


def run(models, pipeline, prompts, task, seconds, seed, knobs, keep=None):
    """(B, T) numpy audio at RATE: the cascade's output, or with FIRST_ONLY the generator's, taken to RATE."""
    stages, enc = models
    with torch.no_grad():
        if FIRST_ONLY and task.mode != "upsample":
            return first_stage(stages, enc, pipeline, prompts, task, seconds, seed, knobs)
        out = cascade.audio_generate(stages, enc, prompts, pipeline, seconds, seed, knobs, task, DEVICE, keep=keep)
    return out.float().numpy()


def first_stage(stages, enc, pipeline, prompts, task, seconds, seed, knobs):
    """The generator's part of cascade.audio_generate, heard at RATE (a log-mel through data.griffin_lim)."""
    name = cascade.PIPELINES[pipeline][0]
    spec = stages[name].spec
    seconds = cascade.task_seconds(task, seconds, spec.clip_seconds)
    x1 = cascade.generate_first(stages[name], enc, prompts, task, seconds, knobs[name],
                                torch.Generator().manual_seed(seed)).float().cpu()      # (B, C, n)
    given = cascade.known_at(spec, task, x1.shape[-1])
    if given is not None:
        known = given.mask.expand_as(x1).clone()
        if task.mode == "continue":      # the generator regenerates the clip's last frames (cascade.EDGE_SECONDS)
            known[..., int(given.mask.sum()) - math.ceil(task.edge * spec.frame_rate):] = False
        KNOWN_ERR[0] = max(KNOWN_ERR[0], float((x1 - given.known)[known].abs().max()))
    audio, rate = (data.griffin_lim(x1), data.MEL_SAMPLE_RATE) if spec.output == "spec" else (x1[:, 0], spec.sample_rate)
    return data.fft_resample(audio.double(), rate, RATE).float().numpy()


def long_joins(total, window, overlap, edge=cascade.EDGE_SECONDS, prefix=0.0):
    """Seconds at which generate_windows' windows join (where each window's known part ends)."""
    joins, done = [], prefix
    while done < total - 1e-9:
        start = max(done - overlap, 0.0)
        if done > start:
            joins.append(done)
        done = min(start + window if start + window >= total - 1e-9 else start + window - edge, total)
    return joins


# ------------------------------------------------------------------------------------------------
# Parts

def part_tune(args, models, lines):
    """Choose the overlap and the RePaint setting on the tuning seeds, by the seam of long-form audio."""
    seconds = args.tune_seconds
    prompts = [p for pair in adherence.prompt_pairs(args.tune_prompts)["tempo"] for p in pair][:args.tune_prompts]
    lines += [f"## Settings chosen (seeds from {TUNE_SEED}, {len(prompts)} prompts, {seconds:g} s long-form)", "",
              SEAM_HEADER[0] + " median ratio, joins / inside | wall s |", SEAM_HEADER[1] + "---|---|"]
    best = None
    for overlap, jump, resample, edge in args.candidates:
        t0 = time.perf_counter()
        task = cascade.AudioTask("long", overlap=overlap, fit=cascade.KnownFit(jump, resample, args.fit.guidance), edge=edge)
        audio = run(models, args.pipeline, prompts, task, seconds, TUNE_SEED, args.knobs)
        joins = long_joins(seconds, WINDOW, overlap, edge)
        at, inside = [], []
        for w in audio:
            a, b = seam_stats(w, joins)
            at, inside = at + a, inside + b
        score = np.median(at) / np.median(inside)
        name = f"overlap {overlap:g} s, jump {jump}, r {resample}, edge {edge:g} s"
        lines.append(seam_row(name, at, inside) + f" {score:.2f} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
        if best is None or score < best[0]:
            best = (score, overlap, jump, resample, edge)
    _, args.overlap, jump, resample, args.edge = best
    args.fit = cascade.KnownFit(jump, resample, args.fit.guidance)
    lines += ["", f"Chosen (lowest median flux ratio, joins / inside): overlap {args.overlap:g} s, jump {jump}, "
              f"r {resample}, edge {args.edge:g} s.", ""]


def long_and_short(args, models, prompts, label):
    """For each prompt i (seed args.seed + i): its --long-seconds clip and a 4 s clip; and the long clips'
    wall seconds per second of audio."""
    task = cascade.AudioTask("long", overlap=args.overlap, fit=args.fit, edge=args.edge)
    waves, short, t0, t_long = [], [], time.perf_counter(), 0.0
    for i, p in enumerate(prompts):
        t1 = time.perf_counter()
        waves.append(run(models, args.pipeline, [p], task, args.long_seconds, args.seed + i, args.knobs)[0])
        t_long += time.perf_counter() - t1
        short.append(run(models, args.pipeline, [p], cascade.AudioTask("long"), WINDOW, args.seed + i, args.knobs)[0])
        print(f"  {label}: {i + 1}/{len(prompts)} clips, {time.perf_counter() - t0:.0f} s", flush=True)
    return waves, short, t_long / (args.long_seconds * len(prompts))


def long_title(args, title, prompts):
    """The heading of a long-form section: length, pipeline, prompts, seeds and the window settings."""
    return (f"## {title}: {args.long_seconds:g} s, {args.pipeline} pipeline{' (generator only)' if FIRST_ONLY else ''}, "
            f"{prompts}, seeds from {args.seed}, overlap {args.overlap:g} s, {fit_name(args.fit)}, edge {args.edge:g} s")


def window_header(first, n_win):
    """The head of a table with one column per 4 s window, then all windows and the 4 s clips."""
    return ["| " + first + " | " + " | ".join(f"{k * WINDOW:g}-{(k + 1) * WINDOW:g} s" for k in range(n_win))
            + f" | all windows | {WINDOW:g} s clips |", "|---" * (n_win + 3) + "|"]


def seam_lines(args, waves, label, per_second):
    """The seam table of long clips (flux at the generator's window joins against inside) and the wall time."""
    joins = long_joins(args.long_seconds, WINDOW, args.overlap, args.edge)
    at, inside = [], []
    for w in waves:
        a, b = seam_stats(w, joins)
        at, inside = at + a, inside + b
    return ["", f"Seam (joins at {', '.join(f'{j:g}' for j in joins)} s):", ""] + SEAM_HEADER + [
        seam_row(label, at, inside), "",
        f"Wall time: {per_second:.2f} s per second of audio (the long clips alone, one at a time, "
        f"{torch.get_num_threads()} thread).", ""]


def part_long(args, models, lines):
    """Long-form clips scored per 4 s window, against 4 s clips of the same prompts and seeds."""
    kinds = args.long_kinds.split(",")
    make = adherence.fresh_prompt_pairs if args.long_prompts == "fresh" else adherence.prompt_pairs
    pairs = {k: v for k, v in make(args.long_pairs).items() if k in kinds}
    prompts = [p for kind in kinds for pair in pairs[kind] for p in pair]
    waves, short, per_second = long_and_short(args, models, prompts, "long")
    n_win = int(args.long_seconds // WINDOW)
    lines += [long_title(args, "Long-form", f"{args.long_pairs} {args.long_prompts} prompt pairs per kind"), "",
              f"Pairs ordered right in each {WINDOW:g} s window of the long clips ({n_win} windows per clip), and in "
              f"{WINDOW:g} s clips of the same prompts and seeds (one generator window, no known part):", ""]
    lines += window_header("kind", n_win)
    i = 0
    for kind in kinds:
        ok = np.zeros((len(pairs[kind]), n_win), dtype=bool)
        ok_short = np.zeros(len(pairs[kind]), dtype=bool)
        for j in range(len(pairs[kind])):
            hi, lo = waves[i], waves[i + 1]
            ok_short[j] = measure(kind, short[i]) > measure(kind, short[i + 1])
            i += 2
            for k in range(n_win):
                cut = slice(int(k * WINDOW * RATE), int((k + 1) * WINDOW * RATE))
                ok[j, k] = measure(kind, hi[cut]) > measure(kind, lo[cut])
        lines.append(f"| {kind} | " + " | ".join(f"{v:.0%}" for v in ok.mean(0)) + f" | {ok.mean():.0%} | {ok_short.mean():.0%} |")
        for word in ("with drums", "solo"):      # the pairs of each drums word apart
            rows = [j for j, pair in enumerate(pairs[kind]) if word in pair[0] and word in pair[1]]
            if rows and len(rows) < len(pairs[kind]):
                lines.append(f"| {kind}, {word} ({len(rows)} pairs) | " + " | ".join(f"{v:.0%}" for v in ok[rows].mean(0))
                             + f" | {ok[rows].mean():.0%} | {ok_short[rows].mean():.0%} |")
    lines += seam_lines(args, waves, "long-form", per_second)


def part_long_judged(args, models, lines):
    """Long-form clips of a judge prompt set (every tempo x instrument x drums x mode, phrased afresh),
    each 4 s window heard by the judge, against 4 s clips of the same prompts and seeds."""
    prompts = judge_bench.prompt_set(args.long_set)
    if args.long_clips < len(prompts):      # a fixed random subset, as judge.py's --every draws one
        keep = np.sort(np.random.default_rng(0).permutation(len(prompts))[:args.long_clips])
        prompts = [prompts[i] for i in keep]
    judge = load_judge(args)
    waves, short, per_second = long_and_short(args, models, [text for text, _ in prompts], "long, judged")
    n_win = int(args.long_seconds // WINDOW)
    hits = {a: np.zeros((len(prompts), n_win + 1), dtype=bool) for a in JUDGED}     # the last column: 4 s clips
    for i, (_, attrs) in enumerate(prompts):
        parts = [waves[i][int(k * WINDOW * RATE):int((k + 1) * WINDOW * RATE)] for k in range(n_win)] + [short[i]]
        for k, part in enumerate(parts):
            heard_as = judge_hears(judge, part)
            for a in JUDGED:
                hits[a][i, k] = heard_as[a] == attrs[a]
    lines += [long_title(args, "Long-form, judged", f"{len(prompts)} prompts of the judge's `{args.long_set}` set"), "",
              f"Clips whose attribute the judge (bench/judge.py's classifiers) hears as prompted, in each {WINDOW:g} s window "
              f"of the long clips and in {WINDOW:g} s clips of the same prompts and seeds:", ""]
    lines += window_header("attribute", n_win)
    for a in JUDGED:
        lines.append(f"| {a} | " + " | ".join(f"{v:.0%}" for v in hits[a][:, :n_win].mean(0))
                     + f" | {hits[a][:, :n_win].mean():.0%} | {hits[a][:, n_win].mean():.0%} |")
    lines += seam_lines(args, waves, "long-form", per_second)


def part_known(args, models, lines, mode):
    """Continuation or inpainting of real clips: attribute agreement, the known part, the seam; the
    known-region samplers of --known-methods side by side."""
    corpus = Corpus(args.seed + (1 if mode == "continue" else 2))
    # clips rendered 0.5 s longer and cut, so that a continued clip does not end in the corpus's 20 ms fade-out
    pairs = {k: [tuple((c[:int(WINDOW * RATE)], a) for c, a in pair) for pair in v]
             for k, v in real_pairs(corpus, args.pairs, WINDOW + 0.5).items() if k in args.kinds.split(",")}
    kinds = {k: v for k, v in KIND_ATTR.items() if k in pairs}
    judge = load_judge(args)
    described = " + the given clip's labels (`--describe`)" if args.describe else ""
    prompts = {kind: [[prompt_for(attrs, leave_out=kind) for _, attrs in pair] for pair in pairs[kind]] for kind in pairs}
    if args.describe:                   # what sample.py --describe does with the given file, once per clip
        mulan = pseudolabel.load_mulan(os.path.join(args.ckpt_dir, "mulan.pt"))
        labels = {kind: [[pseudolabel.hear_labels(mulan, [clip], RATE)[0] for clip, _ in pair] for pair in pairs[kind]]
                  for kind in pairs}
        prompts = {kind: [[pseudolabel.add_labels(text, heard_) for text, heard_ in zip(texts, heard)]
                          for texts, heard in zip(prompts[kind], labels[kind])] for kind in pairs}
        right = {kind: pseudolabel.agreement([list(h.values()) for heard in labels[kind] for h in heard],
                                             [attrs for pair in pairs[kind] for _, attrs in pair])[key][0]
                 for kind, (key, _, _) in kinds.items()}
        heard_right = "MuLan's labels (`--describe`) name the given clip's own " + ", ".join(
            f"{k} for {v:.0%}" for k, v in right.items()) + " of the given clips."
        print("  " + heard_right, flush=True)
    lines += [f"## {'Continuation' if mode == 'continue' else 'Inpainting'} of real toy-corpus clips ({args.pipeline} pipeline, "
              f"{args.pairs} pairs per kind, seeds from {args.seed})", ""]
    if mode == "continue":
        lines.append(f"Given: a {WINDOW:g} s clip; generated: {args.continue_seconds:g} s more; scored: the generated part.")
    else:
        lines.append(f"Given: a {WINDOW:g} s clip; regenerated: {args.region[0]:g}-{args.region[1]:g} s; scored: the region.")
    if args.describe:
        lines += ["", heard_right]
    lines += ["", "Pairs right: the generated parts of a pair measure the right way round, as the given clips do (analyzer of "
              "evaluate.py). Judge agrees: the judge (bench/judge.py's classifiers) hears the given clip's own "
              f"attribute in the generated part ({2 * args.pairs} clips per kind; the prompt never names it).", "",
              "| method | " + " | ".join(f"{k} pairs right" for k in kinds) + " | "
              + " | ".join(f"judge agrees: {k}" for k in kinds) + " | given clips' pairs right | "
              "largest change of the known part | s per s of audio |", "|---" * (2 * len(kinds) + 4) + "|"]
    # the ceiling: the judge on the given clips' own scored part (inpainting: the region; continuation:
    # the whole given clip), heard as the outputs are
    own = {}
    for kind, (key, _, _) in kinds.items():
        cut = slice(*(round(s * RATE) for s in args.region)) if mode == "inpaint" else slice(None)
        own[kind] = np.mean([judge_hears(judge, heard(clip[cut]))[key] == attrs[key] for pair in pairs[kind] for clip, attrs in pair])
    lines.append("| the given clips themselves (the judge's ceiling) | " + "- | " * len(kinds)
                 + " | ".join(f"{own[k]:.0%}" for k in kinds) + " | - | - | - |")
    seams = []
    for fit in args.methods:
        name = fit_name(fit) + described
        scores, agree, given_scores, worst, at, inside, t0, secs = {}, {}, {}, 0.0, [], [], time.perf_counter(), 0.0
        KNOWN_ERR[0] = 0.0
        for kind, (key, _, _) in kinds.items():
            ok, ok_given, hits = [], [], []
            for j, pair in enumerate(pairs[kind]):
                parts, given_parts = [], []
                for (clip, attrs), prompt in zip(pair, prompts[kind][j]):
                    wave = torch.from_numpy(clip)
                    task = cascade.AudioTask(mode, wave, RATE, region=tuple(args.region), fit=fit,
                                             overlap=args.overlap, edge=args.edge)
                    total = WINDOW + args.continue_seconds if mode == "continue" else 0.0
                    out = run(models, args.pipeline, [prompt], task, total, args.seed + 100 + j, args.knobs)[0]
                    secs += len(out) / RATE
                    if mode == "continue":
                        known, new = slice(0, len(clip)), slice(len(clip), len(out))
                        joins = [WINDOW] + long_joins(len(out) / RATE, WINDOW, args.overlap, args.edge,
                                                      prefix=WINDOW - args.edge)[1:]
                    else:
                        a, b = (round(s * RATE) for s in args.region)
                        known, new, joins = np.r_[0:a, b:len(clip)], slice(a, b), list(args.region)
                    worst = max(worst, float(np.abs(out[known] - clip[known]).max()))
                    parts.append(measure(kind, out[new]))
                    given_parts.append(measure(kind, clip[new] if mode == "inpaint" else clip))
                    heard_as = judge_hears(judge, out[new])
                    hits.append(heard_as[key] == attrs[key])
                    a_, b_ = seam_stats(out, joins)
                    at, inside = at + a_, inside + b_
                ok.append(parts[0] > parts[1])
                ok_given.append(given_parts[0] > given_parts[1])
            scores[kind], given_scores[kind], agree[kind] = np.mean(ok), np.mean(ok_given), np.mean(hits)
            print(f"  {mode} {name} {kind}: pairs {scores[kind]:.0%}, judge {agree[kind]:.0%}", flush=True)
        speed = (time.perf_counter() - t0) / secs
        worst = KNOWN_ERR[0] if FIRST_ONLY else worst
        lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.0%}" for k in kinds) + " | "
                     + " | ".join(f"{agree[k]:.0%}" for k in kinds) + " | "
                     + "/".join(f"{given_scores[k]:.0%}" for k in kinds) + f" | {worst:.2e} | {speed:.2f} |")
        seams.append(seam_row(name, at, inside))
    lines += ["", "Seam:", ""] + SEAM_HEADER + seams + [""]


def load_judge(args):
    """bench/judge.py's judge (trained once and kept at --judge; about 10 minutes when missing)."""
    return judge_bench.load_judge(args.judge, log=lambda line: print(line, flush=True))


def judge_hears(judge, wave, rate=RATE):
    """{attribute: the value the judge hears} for one clip."""
    return {name: values[0] for name, values in judge_bench.hear(judge, [wave], rate).items()}


def heard(clip):
    """A real clip as the scored outputs are heard: itself, or with --first-stage its log-mel through Griffin-Lim."""
    if not FIRST_ONLY:
        return clip
    mel = data.log_mel(torch.from_numpy(clip).double(), RATE).float()[None]
    return data.fft_resample(data.griffin_lim(mel).double(), data.MEL_SAMPLE_RATE, RATE)[0].float().numpy()


def part_init(args, models, lines):
    """SDEdit on real clips with prompts that change one attribute: as the judge hears the outputs, the
    share that take the prompted value and keep the clip's other two, per strength."""
    corpus = Corpus(args.seed + 3)
    judge = load_judge(args)
    clips = []
    for i in range(args.a2a_clips):
        clip, attrs = corpus.clip(WINDOW, ("slow", "fast")[i % 2], ("flute", "bass")[i // 2 % 2], bool(i // 4 % 2))
        clips.append((clip, attrs))
    flip = {"tempo": {"fast": "slow", "slow": "fast"}, "instrument": {"flute": "bass", "bass": "flute"},
            "drums": {True: False, False: True}}
    keys = [key for key, _, _ in KIND_ATTR.values()]
    lines += [f"## Audio-to-audio (SDEdit at the generator, {args.pipeline} pipeline): {args.a2a_clips} real clips, "
              "each with three prompts that change one attribute", "",
              "Took: the judge (bench/judge.py) hears the prompted value; kept: it hears the clip's own value of the "
              "other two (tempo, instrument, drums). First row: the given clips themselves"
              + (", heard as the outputs are (log-mel through Griffin-Lim)" if FIRST_ONLY else "") + ".", "",
              "| strength | " + " | ".join(f"{k}: took / kept others / both" for k in KIND_ATTR) + " | all: both |",
              "|---" * (len(KIND_ATTR) + 2) + "|"]
    given = [judge_hears(judge, heard(c)) for c, _ in clips]
    kept_given = {k: np.mean([all(g[o] == a[o] for o in keys if o != k) for g, (_, a) in zip(given, clips)]) for k in keys}
    lines.append("| the given clips | " + " | ".join(f"- / {kept_given[k]:.0%} / -" for k in keys) + " | - |")
    for s in args.strengths:
        took, kept, both = {k: [] for k in keys}, {k: [] for k in keys}, {k: [] for k in keys}
        for i, (clip, attrs) in enumerate(clips):
            prompts = [prompt_for(dict(attrs, **{key: flip[key][attrs[key]]})) for key in keys]
            task = cascade.AudioTask("init", torch.from_numpy(clip), RATE, strength=s)
            outs = run(models, args.pipeline, prompts, task, 0.0, 200 + i, args.knobs)
            for key, out in zip(keys, outs):
                hears = judge_hears(judge, out)
                t = hears[key] == flip[key][attrs[key]]
                k_ = all(hears[o] == attrs[o] for o in keys if o != key)
                took[key].append(t), kept[key].append(k_), both[key].append(t and k_)
        allb = np.mean([v for k in keys for v in both[k]])
        lines.append(f"| {s:g} | " + " | ".join(f"{np.mean(took[k]):.0%} / {np.mean(kept[k]):.0%} / {np.mean(both[k]):.0%}"
                                                for k in keys) + f" | {allb:.0%} |")
        print(lines[-1], flush=True)
    lines.append("")


UPSAMPLE_BANDS = {3200: [(0, 1600), (1600, 8000), (8000, 12000)], 16000: [(0, 8000), (8000, 12000)]}


def part_upsample(args, models, lines):
    """Real clips taken down to 3.2 / 16 kHz and restored: LSD to the real clip per band, the given band
    (below the input's Nyquist) apart from the bands the stages make, clips with and without drums apart
    (the corpus's pitched instruments have next to nothing above ~6 kHz; its drums fill the top band)."""
    corpus = Corpus(args.seed + 4)
    # {(rate, band): {"drums"/"solo": {"cascade"/"fft"/"level": [...]}}}
    rows = {(low, band): {g: {m: [] for m in ("cascade", "fft", "level")} for g in ("drums", "solo")}
            for low, bands in UPSAMPLE_BANDS.items() for band in bands}
    t0, secs, kept = time.perf_counter(), 0.0, {low: 0.0 for low in UPSAMPLE_BANDS}
    for i in range(args.upsample_clips):
        clip, attrs = corpus.clip(WINDOW, ("slow", "fast")[i % 2], ("flute", "bass", "piano", "guitar", "organ")[i % 5],
                                  bool(i // 2 % 2))
        ref = torch.from_numpy(clip).double()
        group = "drums" if attrs["drums"] else "solo"
        for low, bands in UPSAMPLE_BANDS.items():
            down = data.fft_resample(ref, RATE, low)
            plain = data.fft_resample(down, low, RATE).numpy()
            task = cascade.AudioTask("upsample", data.fft_resample(down, low, RATE).float(), low)
            out = run(models, "wave", [prompt_for(attrs)], task, 0.0, 300 + i, args.knobs)[0]
            secs += WINDOW
            given = torch.fft.rfftfreq(len(clip), 1 / RATE) < low / 2
            spectra = [torch.fft.rfft(torch.as_tensor(np.asarray(w), dtype=torch.float64))[given] for w in (out, plain)]
            kept[low] = max(kept[low], float((spectra[0] - spectra[1]).abs().max() / spectra[1].abs().max()))
            for band in bands:
                r = rows[(low, band)][group]
                r["cascade"].append(log_spectral_distance(out, clip, band))
                r["fft"].append(log_spectral_distance(plain, clip, band))
                r["level"].append(band_level(out, clip, band))
        print(f"  upsample {i + 1}/{args.upsample_clips}", flush=True)
    n = {g: len(rows[(3200, (0, 1600))][g]["cascade"]) for g in ("drums", "solo")}
    lines += [f"## Up-sampling real toy-corpus clips to 24 kHz ({args.upsample_clips} clips: {n['drums']} with drums, "
              f"{n['solo']} without)", "",
              "Log-spectral distance to the real 24 kHz clip (dB, mean +- std over clips; 2048-point frames; powers floored "
              "80 dB under the clip's loudest bin; lower is better), per band; level = the restored band's energy over the "
              "real one's (dB, mean; floored 80 dB under the clip's energy).", "",
              "| input | band (Hz) | made by | with drums: cascade | FFT | level | without drums: cascade | FFT | level |",
              "|---|---|---|---|---|---|---|---|---|"]
    stat = lambda v: f"{np.mean(v):.2f} +- {np.std(v):.2f}" if v else "-"
    for (low, band), groups in rows.items():
        how = "given (kept)" if band[1] <= low / 2 else ("cascader" if band[1] <= 8000 else "super-res")
        cells = [f"{stat(g['cascade'])} | {stat(g['fft'])} | {np.mean(g['level']):+.1f}" if g["cascade"] else "- | - | -"
                 for g in groups.values()]
        lines.append(f"| {low} Hz | {band[0]}-{band[1]} | {how} | " + " | ".join(cells) + " |")
    lines += ["", "The given band, on the whole clip's spectrum (one FFT, no frames, so no leakage from the band above): "
              "largest difference from the given clip's, relative to its largest bin: "
              + ", ".join(f"{low} Hz input {v:.1e}" for low, v in kept.items()) + ". The frame LSD of the given band "
              "also counts the made band's leakage through the window's side lobes.",
              "", f"Wall time: {(time.perf_counter() - t0) / secs:.2f} s per second of audio (both inputs, "
              f"{torch.get_num_threads()} thread).", ""]


def frame_pitches(wave, rate=RATE, fmin=30.0, fmax=1600.0):
    """MIDI pitch of each voiced, non-quiet frame: audio_measures.median_pitch's frames, before its median."""
    wave = data.fft_resample(np.asarray(wave, dtype=np.float64), rate, audio_measures.PITCH_RATE)
    sr = audio_measures.PITCH_RATE
    n = 2 ** int(math.ceil(math.log2(2 * sr / fmin)))
    starts = np.arange(0, len(wave) - n + 1, n // 2)
    frames = wave[starts[:, None] + np.arange(n)[None, :]]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    frames = frames[rms > 0.1 * rms.max()]
    periods = audio_measures._periods(audio_measures._nsdf(frames), max(2, int(sr / fmax)),
                                      min(int(math.ceil(sr / fmin)), n // 2 - 2))
    periods = periods[np.isfinite(periods)]
    return 69.0 + 12.0 * np.log2(sr / periods / 440.0)


FRAME_PROMPTS = ("a slow bass line in a major key, with drums", "a fast bass line in a minor key, with drums")


def part_frames(args, models, lines):
    """Why register pairs fail on bass with drums: the share of a clip's voiced frames whose pitch reads
    high (over MIDI 70, where drum frames land), real clips against generated 4 s clips and 4 s windows
    of long-form clips of bass-with-drums prompts (fresh seeds from 500)."""
    corpus = Corpus(args.seed + 5)
    groups = {"real bass-with-drums clips": [heard(corpus.clip(WINDOW, ("slow", "fast")[i % 2], "bass", True)[0])
                                            for i in range(args.frame_clips)]}
    short, long_windows = [], []
    for i in range(args.frame_clips):
        short.append(run(models, args.pipeline, [FRAME_PROMPTS[i % 2]], cascade.AudioTask("long"), WINDOW, 500 + i,
                         args.knobs)[0])
    for i, p in enumerate(FRAME_PROMPTS):
        task = cascade.AudioTask("long", overlap=args.overlap, edge=args.edge)
        w = run(models, args.pipeline, [p], task, args.long_seconds, 600 + i, args.knobs)[0]
        long_windows += [w[int(k * WINDOW * RATE):int((k + 1) * WINDOW * RATE)] for k in range(int(args.long_seconds // WINDOW))]
    groups[f"generated {WINDOW:g} s clips"] = short
    groups[f"{WINDOW:g} s windows of {args.long_seconds:g} s long-form clips"] = long_windows
    lines += [f"## Register on bass with drums: frames whose pitch reads high ({args.pipeline} pipeline"
              + (", generator only" if FIRST_ONLY else "") + ")", "",
              "evaluate.py's median pitch takes the median over a clip's voiced frames; on bass with drums, drum frames "
              "read near MIDI 85-90, so a clip whose drum frames pass half of its voiced ones measures as high as a "
              "flute. Prompts: " + "; ".join(f'"{p}"' for p in FRAME_PROMPTS) + ".", "",
              "| clips | n | frames above MIDI 70 (median, min-max over clips) | clips whose median pitch reads above 70 |",
              "|---|---|---|---|"]
    for name, waves in groups.items():
        pitches = [frame_pitches(w) for w in waves]
        share = [float((m > 70).mean()) if len(m) else float("nan") for m in pitches]
        high = [bool(len(m)) and float(np.median(m)) > 70 for m in pitches]
        lines.append(f"| {name} | {len(waves)} | {np.nanmedian(share):.0%} ({np.nanmin(share):.0%}-{np.nanmax(share):.0%}) "
                     f"| {np.mean(high):.0%} |")
    lines.append("")


def parse_method(text):
    """A KnownFit from "replace", "repaint:J:R" or "guided:W"."""
    name, *values = text.split(":")
    if name == "replace" and not values:
        return cascade.KnownFit()
    if name == "repaint" and len(values) == 2:
        return cascade.KnownFit(jump=int(values[0]), resample=int(values[1]))
    if name == "guided" and len(values) == 1:
        return cascade.KnownFit(guidance=float(values[0]))
    raise SystemExit(f"beyond.py: error: --known-methods: {text!r} is not replace, repaint:J:R or guided:W")


def fit_name(fit):
    """How a known-region sampler is named in the tables."""
    if fit.guidance > 0:
        return f"reconstruction guidance w={fit.guidance:g}" + (f", RePaint j={fit.jump} r={fit.resample}" if fit.jump else "")
    return f"RePaint j={fit.jump} r={fit.resample}" if fit.jump and fit.resample > 1 else "replacement"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--pipeline", default="spec", choices=("wave", "spec"), help="the path for long-form, continuation, "
                   "inpainting and audio-to-audio (up-sampling always uses the waveform path's cascader)")
    p.add_argument("--parts", default="tune,long,continue,inpaint,init,upsample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-seconds", type=float, default=30.0)
    p.add_argument("--long-pairs", type=int, default=20, help="prompt pairs per kind for long-form")
    p.add_argument("--long-prompts", default="tuning", choices=("tuning", "fresh"),
                   help="long-form: bench/adherence.py's prompt pairs (`prompt_pairs`) or its fresh phrasings")
    p.add_argument("--long-set", default="check", choices=("tune", "eval", "check"),
                   help="long-judged: the judge's prompt set (bench/judge_prompts.py)")
    p.add_argument("--long-clips", type=int, default=40, help="long-judged: prompts of --long-set (a fixed subset if < 40)")
    p.add_argument("--long-kinds", default="tempo,register,drums", help="the kinds of prompt pairs for long-form")
    p.add_argument("--pairs", type=int, default=20, help="real clip pairs per kind for continuation and inpainting")
    p.add_argument("--kinds", default="tempo,register,drums", help="continue / inpaint: the kinds of clip pairs")
    p.add_argument("--continue-seconds", type=float, default=4.0, help="seconds generated after the given clip")
    p.add_argument("--region", default="1:3", help="inpainting: the seconds regenerated in a 4 s clip")
    p.add_argument("--a2a-clips", type=int, default=20)
    p.add_argument("--frame-clips", type=int, default=10, help="frames part: real and generated 4 s clips")
    p.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--upsample-clips", type=int, default=20)
    p.add_argument("--tune-prompts", type=int, default=4)
    p.add_argument("--tune-seconds", type=float, default=12.0)
    p.add_argument("--tune-candidates", default="1:0:1,2:0:1,1:2:3,2:0:1:0",
                   help="OVERLAP:JUMP:R[:EDGE] settings tried by the tune part (EDGE: seconds at the end of each "
                   f"window left to the next, default {cascade.EDGE_SECONDS:g})")
    p.add_argument("--overlap", type=float, default=cascade.DEFAULT_OVERLAP, help="used when the tune part is not run")
    p.add_argument("--edge", type=float, default=cascade.EDGE_SECONDS, help="used when the tune part is not run")
    p.add_argument("--jump", type=int, default=sample.DEFAULT_JUMP, help="long-form: RePaint's jump (tune may change it)")
    p.add_argument("--resample", type=int, default=sample.DEFAULT_RESAMPLE, help="long-form: RePaint's r")
    p.add_argument("--guidance", type=float, default=0.0, help="long-form: reconstruction guidance")
    p.add_argument("--known-methods", default=f"replace,repaint:{REPAINT[0]}:{REPAINT[1]},guided:{sample.DEFAULT_GUIDANCE:g}",
                   help="continue / inpaint: the known-region samplers compared (replace, repaint:J:R, guided:W)")
    p.add_argument("--describe", action="store_true", help="continue / inpaint: each prompt gets the given clip's "
                   "pseudo-labels, as sample.py --describe adds them")
    p.add_argument("--first-stage", action="store_true", help="tune, long, continue, inpaint, init: score the generator's "
                   "own output (a log-mel heard through Griffin-Lim), not the whole cascade's; about 5x cheaper on the "
                   "spectrogram path. The later stages run over the whole length at once, so the seams are the generator's")
    p.add_argument("--judge", default=judge_bench.DEFAULT_JUDGE, help="continue / inpaint: bench/judge.py's trained judge "
                   "(trained and stored here when missing)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 on cuda, as sample.py)")
    p.add_argument("--out", default="bench/results_beyond.md")
    sample.add_knob_flags(p)
    args = p.parse_args(argv)
    args.knobs = sample.read_knobs(args, p)
    args.strengths = [float(s) for s in args.strengths.split(",")]
    args.region = [float(s) for s in args.region.split(":")]
    args.fit = cascade.KnownFit(args.jump, args.resample, args.guidance)
    args.methods = [parse_method(m) for m in args.known_methods.split(",") if m]
    args.candidates = [(float(c[0]), int(c[1]), int(c[2]), float(c[3]) if len(c) > 3 else cascade.EDGE_SECONDS)
                       for c in (c.split(":") for c in args.tune_candidates.split(","))]
    return args


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    global DEVICE, FIRST_ONLY
    DEVICE, FIRST_ONLY = torch.device(args.device), args.first_stage
    parts = args.parts.split(",")
    lines = ["# Audio in: long-form, continuation, inpainting, audio-to-audio, up-sampling", "",
             "Command: `OMP_NUM_THREADS=1 python bench/beyond.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", ""]
    if FIRST_ONLY:
        lines += ["Scored: the generator's output alone (`--first-stage`; the spectrogram generator's log-mels through "
                  "Griffin-Lim), resampled to 24 kHz; known part: the generator's own output (log-mel / 3.2 kHz).", ""]
    models = load(args.pipeline, args.ckpt_dir) if set(parts) - {"upsample"} else None
    todo = {"tune": part_tune, "long": part_long, "long-judged": part_long_judged, "continue": lambda a, m, l: part_known(a, m, l, "continue"),
            "inpaint": lambda a, m, l: part_known(a, m, l, "inpaint"), "init": part_init, "frames": part_frames}
    for part in parts:
        t0 = time.perf_counter()
        if part == "upsample":
            part_upsample(args, models if args.pipeline == "wave" else load("wave", args.ckpt_dir), lines)
        else:
            todo[part](args, models, lines)
        lines += [f"({part}: {time.perf_counter() - t0:.0f} s)", ""]
        with open(args.out, "w") as f:            # after every part, so a cut-off run keeps what it has
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
