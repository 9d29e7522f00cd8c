"""Does a generated clip sound like what it was asked for, and like the corpus? A judge trained on real clips.

    python bench/judge.py generate --set eval --out FILE [--pipelines wave,spec] [--seeds 0,1] [--every K]
                                   [--from FILE | --real] [--restart STAGE|second|third]
                                   [sample.py's --STAGE-FIELD knobs]
    python bench/judge.py score FILE... [--out bench/results_judge.md] [--judge /tmp/judge.pt]

`generate` runs the shipped cascade (sample.py's code path, cascade.cascade_generate) on a prompt
set of bench/judge_prompts.py (every tempo x instrument x drums x mode, phrased freshly) for each
seed and pipeline, and stores every stage's output. With --from and --restart (the second or third
stage of the pipeline), the earlier stages' outputs are taken from a stored run and only the later
stages are sampled again, with the knobs given: a sampler setting of a later stage is tried without
paying for the generator again. With --real, the generator's output is a real clip of the prompted
attributes (taken to 3.2 kHz, or its log-mel): the later stages' own fidelity.

`score` measures stored runs, per stage (the spectrogram generator's log-mel heard through
data.griffin_lim, as bench/adherence.py does):
- attribute accuracy: the share of clips whose tempo, instrument, drums and mode, as the judge
  (judge_model.py) hears them, are the prompted ones; the judge's own accuracy on held-out real
  clips (clean, and heard through the same stage-like degradations) is printed beside them;
- noise floor: audio_measures.noise_floor_db (the median spectrogram bin under 8 kHz against the
  peak bins);
- confident notes: audio_measures.confident_note_fraction;
- distances of MFCC statistics (audio_measures.mfcc_stats, standardized on real clips): between
  outputs of different prompts, against real clips of different attributes; between two seeds of
  one prompt, against two real clips with the same attributes.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cascade  # noqa: E402
import data  # noqa: E402
import sample  # noqa: E402
import audio_measures  # noqa: E402
import judge_model as jm  # noqa: E402
import toy_corpus  # noqa: E402
from judge_prompts import prompt_set  # noqa: E402


# ------------------------------------------------------------------------------------------------
# generate

def load_pipeline(ckpt_dir, pipeline):
    args = argparse.Namespace(pipeline=pipeline, ckpt_dir=ckpt_dir)
    return sample.load_models(args, argparse.ArgumentParser(), torch.device("cpu"))


def generate_pipeline(stages, text_encoder, pipeline, prompts, seed, knobs, batch, log):
    """{stage: (N, C, T) float32} for the prompts, batches of `batch`, batch k seeded seed * 1000 + k."""
    seconds = stages[cascade.PIPELINES[pipeline][0]].spec.clip_seconds
    outputs = {}
    for start in range(0, len(prompts), batch):
        keep = {}
        cascade.cascade_generate(stages, text_encoder, prompts[start:start + batch], pipeline, seconds,
                                 seed * 1000 + start, knobs, keep=keep)
        for name, x in keep.items():
            outputs.setdefault(name, []).append(x.float())
        log(f"{pipeline} seed {seed}: {start + len(keep[name])}/{len(prompts)}")
    return {name: torch.cat(xs) for name, xs in outputs.items()}


def regenerate(stages, text_encoder, pipeline, prompts, seed, knobs, batch, stored, restart, log):
    """The stages from `restart` on, sampled again from the stored outputs of the stages before it."""
    names = cascade.PIPELINES[pipeline]
    first = stages[names[0]].spec
    seconds = first.clip_seconds
    out = {n: stored[n] for n in names[:names.index(restart)]}
    for start in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed * 1000 + start + 777)
        chunk = prompts[start:start + batch]
        if restart == names[1]:
            x1 = stored[names[0]][start:start + batch]
            x2 = cascade.second_stage(stages[names[1]], first, x1, text_encoder, chunk, seconds, knobs[names[1]], gen)
            out.setdefault(names[1], []).append(x2.float())
        else:
            x2 = stored[names[1]][start:start + batch]
        x3 = cascade.third_stage(stages[names[2]], x2, seconds, knobs[names[2]], gen)
        out.setdefault(names[2], []).append(x3.float())
        log(f"{pipeline} seed {seed} from {restart}: {start + len(chunk)}/{len(prompts)}")
    return {n: (torch.cat(v) if isinstance(v, list) else v) for n, v in out.items()}


def real_first_stage(prompts, pipeline, seed):
    """Stored-run layout holding, as the generator's output, real clips with the prompted attributes (tunes
    the judge never trained on): taken down to 3.2 kHz, or their log-mels."""
    _, heldout = jm.split_tunes(toy_corpus.load_tunes())
    clips, _ = jm.render_real(heldout, len(prompts), seed + 99, fixed=[a for _, a in prompts])
    x = torch.tensor(np.stack(clips), dtype=torch.float32)[:, None]                    # (N, 1, T) at 16 kHz
    if pipeline == "wave":
        return {"wave-generator": data.fft_resample(x.double(), jm.RATE, 3200).float()}
    return {"spec-generator": data.log_mel(x[:, 0], jm.RATE)}


def generate(args, p):
    knobs = sample.read_knobs(args, p)
    prompts = prompt_set(args.set)
    if args.every > 1:      # a fixed random subset, so that it holds both values of every attribute
        keep = np.sort(np.random.default_rng(0).permutation(len(prompts))[:len(prompts) // args.every])
        prompts = [prompts[i] for i in keep]
    seeds = [int(s) for s in args.seeds.split(",")]
    stored = torch.load(args.from_, weights_only=True) if args.from_ else None
    if stored is not None:                   # the stored run's own prompts, in its order
        prompts = list(zip(stored["prompts"], stored["attributes"]))
    texts = [t for t, _ in prompts]
    if args.real:
        stored = {"runs": {f"{pl}/{sd}": real_first_stage(prompts, pl, sd) for pl in args.pipelines.split(",")
                           for sd in seeds}}
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)
    name = stored["set"] if args.from_ else args.set + (" (real clips as the generator's output)" if args.real else "")
    result = {"set": name, "prompts": texts, "attributes": [a for _, a in prompts], "seeds": seeds,
              "knobs": {s: {k: v for k, v in vars(kn).items() if v is not None} for s, kn in knobs.items()},
              "runs": {}}
    for pipeline in args.pipelines.split(","):
        stages, text_encoder = load_pipeline(args.ckpt_dir, pipeline)
        for seed in seeds:
            key = f"{pipeline}/{seed}"
            if stored is not None:
                restart = {"second": cascade.PIPELINES[pipeline][1], "third": cascade.PIPELINES[pipeline][2]}.get(
                    args.restart, args.restart if args.restart in cascade.PIPELINES[pipeline] else None)
                if restart is None or restart == cascade.PIPELINES[pipeline][0]:
                    p.error(f"--restart must name the second or third stage of the {pipeline} pipeline")
                result["runs"][key] = regenerate(stages, text_encoder, pipeline, texts, seed, knobs, args.batch,
                                                 stored["runs"][key], restart, log)
            else:
                result["runs"][key] = generate_pipeline(stages, text_encoder, pipeline, texts, seed, knobs,
                                                        args.batch, log)
            torch.save(result, args.out)         # after each run: a cut-off job keeps what it made
    log(f"wrote {args.out}")


# ------------------------------------------------------------------------------------------------
# the judge: trained once on real clips, cached

def train_judge(n_train, n_heldout, copies, seed, log, own_features=False):
    """Classifiers on real clips (clean + `copies` degraded copies each) of the training tunes, their
    accuracy on held-out tunes' clips (clean and per degradation), and a real reference set: two clips of
    held-out tunes for each of the 40 prompted attribute combinations."""
    tunes = toy_corpus.load_tunes()
    train_tunes, heldout_tunes = jm.split_tunes(tunes)
    rng = np.random.default_rng(seed)
    clips, attrs = jm.render_real(train_tunes, n_train, seed)
    x, y_attrs = [], []
    for i, (c, a) in enumerate(zip(clips, attrs)):
        x.append(jm.features(c, jm.RATE))
        x += [jm.features(jm.random_degradation(c, rng), jm.RATE) for _ in range(copies)]
        y_attrs += [a] * (1 + copies)
        if i % 100 == 99:
            log(f"judge training features: {i + 1}/{n_train} clips")
    x = np.stack(x)
    held, held_attrs = jm.render_real(heldout_tunes, n_heldout, seed + 1)
    held_x = {}
    for column, fn in [("clean", None)] + list(jm.DEGRADATIONS.items()):
        held_x[column] = np.stack([jm.features(c if fn is None else fn(c, rng), jm.RATE) for c in held])
        log(f"judge held-out features, {column}")
    combos = [a for _, a in prompt_set("eval")]
    reference, ref_attrs = jm.render_real(heldout_tunes, 2 * len(combos), seed + 2, fixed=combos + combos)
    judge = {"train_x": x, "train_attrs": y_attrs, "held_x": held_x, "held_attrs": held_attrs,
             "n": (n_train, n_heldout, copies), "own_features": own_features,
             "reference": np.stack(reference).astype(np.float32),
             "reference_attrs": ref_attrs}
    return fit_judge(judge, log)


def fit_judge(judge, log):
    """The classifiers fitted on the stored training features, and their held-out accuracy (clips whose
    value is a class: a medium tempo is not scored)."""
    own = judge.get("own_features", False)
    judge["models"] = {name: jm.fit(judge["train_x"], jm.labels(judge["train_attrs"], name), len(classes),
                                    jm.feature_columns(jm.OWN_FEATURES[name]) if own else None)
                       for name, classes in jm.ATTRIBUTES.items()}
    judge["accuracy"] = {}
    for column, xh in judge["held_x"].items():
        acc = {}
        for name, m in judge["models"].items():
            y = jm.labels(judge["held_attrs"], name)
            acc[name] = float((jm.predict(m, xh[y >= 0]) == y[y >= 0]).mean())
        judge["accuracy"][column] = acc
        log(f"judge held-out, {column}: " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    return judge


DEFAULT_JUDGE = "/tmp/fidelity_judge.pt"
TRAINING = dict(train_clips=900, heldout_clips=200, copies=2, judge_seed=0, own_features=False)  # `score`'s defaults


def judge_key(args):
    """What a stored judge must match to be used: its training sizes and seed, and the code that renders
    its clips and computes its features (a judge from other code would hear today's features wrongly)."""
    code = hashlib.sha256()
    for module in (jm, toy_corpus):
        with open(module.__file__, "rb") as f:
            code.update(f.read())
    return {"n": (args.train_clips, args.heldout_clips, args.copies), "seed": args.judge_seed,
            "own_features": args.own_features,
            "code": code.hexdigest()}


def load_judge(path, args=None, log=print):
    """The judge stored at path if it was trained as asked (args: `score`'s flags; None: TRAINING) by
    today's code; otherwise one trained and stored there."""
    args = args or argparse.Namespace(**TRAINING)
    key = judge_key(args)
    if os.path.isfile(path):
        judge = torch.load(path, weights_only=False)
        if judge.get("key") == key:
            judge = fit_judge(judge, log)
            judge["mtime"] = os.path.getmtime(path)
            return judge
        log(f"{path} was trained with other settings or code: training the judge again")
    judge = train_judge(args.train_clips, args.heldout_clips, args.copies, args.judge_seed, log, args.own_features)
    judge["key"] = key
    torch.save(judge, path)
    judge["mtime"] = os.path.getmtime(path)
    return judge


# ------------------------------------------------------------------------------------------------
# score

STAGE_RATES = {"wave-generator": 3200, "cascader": 16000, "vocoder": 16000, "super-res": 24000}


def stage_audio(name, x):
    """(list of 1-D clips, rate) of a stage's stored output; a log-mel is heard through Griffin-Lim."""
    if name == "spec-generator":
        return [w.numpy() for w in data.griffin_lim(x)], data.MEL_SAMPLE_RATE
    return [w[0].numpy() for w in x], STAGE_RATES[name]


def hear(judge, clips, rate):
    """{attribute: [the value the judge hears in each clip]}."""
    x = np.stack([jm.features(c, rate) for c in clips])
    return {name: [jm.ATTRIBUTES[name][k] for k in jm.predict(m, x)] for name, m in judge["models"].items()}


def measure_clips(judge, clips, rate):
    """Per clip: predicted attributes, noise floor, confident-note share, MFCC statistics."""
    return {"predicted": hear(judge, clips, rate),
            "floor": np.array([audio_measures.noise_floor_db(c, rate) for c in clips]),
            "notes": np.array([audio_measures.confident_note_fraction(c, rate) for c in clips]),
            "bands": np.stack([audio_measures.band_floors_db(c, rate) for c in clips]),
            "mfcc": np.stack([audio_measures.mfcc_stats(c, rate) for c in clips]),
            "key": np.array([jm.key_profile(c, rate) for c in clips])}


def accuracy(predicted, attrs):
    """{attribute: share of clips whose predicted value is the prompted one}, and all four at once."""
    hits = {name: np.array([p == a[name] for p, a in zip(predicted[name], attrs)]) for name in jm.ATTRIBUTES}
    out = {name: float(h.mean()) for name, h in hits.items()}
    out["all four"] = float(np.all(np.stack(list(hits.values())), axis=0).mean())
    return out


def distances(mfcc, scale, attrs, seeds_of_prompt):
    """(mean distance between clips of different attribute sets, mean distance between two clips of one
    set), of standardized MFCC statistics. seeds_of_prompt: list of (index a, index b) pairs of one set."""
    z = mfcc / scale
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    key = [tuple(sorted(a.items())) for a in attrs]
    differ = np.array([[key[i] != key[j] for j in range(len(key))] for i in range(len(key))])
    same = np.mean([d[i, j] for i, j in seeds_of_prompt])
    return float(d[differ].mean()), float(same)


def real_rows(judge, log):
    """The reference set measured as each stage's output would be: at 24 kHz, at 3.2 kHz, through Griffin-Lim."""
    ref, attrs = [np.asarray(r, dtype=np.float64) for r in judge["reference"]], judge["reference_attrs"]
    half = len(ref) // 2
    pairs = [(i, i + half) for i in range(half)]
    variants = {"real clips (16 kHz)": (ref, jm.RATE),
                "real clips low-passed (3.2 kHz)": ([data.fft_resample(r, jm.RATE, 3200) for r in ref], 3200),
                "real clips through Griffin-Lim": ([jm.griffin_lim_round_trip(r) for r in ref], jm.RATE)}
    rows, scale = {}, None
    for name, (clips, rate) in variants.items():
        m = measure_clips(judge, clips, rate)
        scale = m["mfcc"].std(axis=0) + 1e-6 if scale is None else scale
        rows[name] = (m, attrs, pairs)
        log(f"measured {name}")
    return rows, scale


def has_every_column(rows):
    """Whether cached rows were measured with every column measure_clips makes today."""
    return all("bands" in m and "key" in m for m, _, _ in rows.values())


def stored_rows(path, judge, log):
    """{row name: (measurements, prompted attributes, seed pairs)} for every run and stage of a stored file;
    kept in PATH.judged beside it (measured again when the file or the judge is newer)."""
    stored = torch.load(path, weights_only=True)
    cache = path + ".judged"
    if os.path.isfile(cache) and os.path.getmtime(cache) > max(os.path.getmtime(path), judge["mtime"]):
        rows = torch.load(cache, weights_only=False)
        if has_every_column(rows):
            return rows, stored
    rows = {}
    for pipeline in ("wave", "spec"):
        keys = [k for k in stored["runs"] if k.startswith(pipeline + "/")]
        if not keys:
            continue
        for stage in cascade.PIPELINES[pipeline]:
            clips, rate, attrs = [], None, []
            for k in keys:
                c, rate = stage_audio(stage, stored["runs"][k][stage])
                clips += c
                attrs += stored["attributes"]
            n = len(stored["prompts"])
            pairs = [(i, i + n * s) for s in range(1, len(keys)) for i in range(n)]
            label = f"{pipeline}: {stage}" + (" (Griffin-Lim)" if stage == "spec-generator" else "")
            rows[label] = (measure_clips(judge, clips, rate), attrs, pairs)
            log(f"measured {path} {label}")
    torch.save(rows, cache)
    return rows, stored


def table(rows, scale, judge):
    acc = judge["accuracy"]
    held = lambda name: f"{acc['clean'][name]:.0%} / {min(v[name] for v in acc.values()):.0%}"
    head = ["| clips | " + " | ".join(f"{n} (judge {held(n)})" for n in jm.ATTRIBUTES) +
            " | all four | noise floor dB, median of solo / drum clips | confident notes (mean) | MFCC dist. different sets | "
            "MFCC dist. same set |", "|---" * 10 + "|"]
    lines = []
    for label, (m, attrs, pairs) in rows.items():
        a = accuracy(m["predicted"], attrs)
        far, near = distances(m["mfcc"], scale, attrs, pairs)
        lines.append(f"| {label} | " + " | ".join(f"{a[n]:.0%}" for n in jm.ATTRIBUTES) +
                     f" | {a['all four']:.0%} | {floors(m['floor'], attrs)} | {np.nanmean(m['notes']):.0%} | "
                     f"{far:.2f} | {near:.2f} |")
    return head + lines


def band_table(rows):
    """Median over solo clips of each band's floor (dB under the clip's peak bins): where the hiss lies."""
    edges = audio_measures.FLOOR_BANDS_HZ
    bands = [f"{lo / 1000:g}-{hi / 1000:g} kHz" for lo, hi in zip(edges[:-1], edges[1:])]
    lines = ["| clips (solo) | " + " | ".join(bands) + " |", "|---" * len(edges) + "|"]
    for label, (m, attrs, _) in rows.items():
        solo = np.array([not a["drums"] for a in attrs])
        cells = np.median(m["bands"][solo], axis=0) if solo.any() else np.full(len(edges) - 1, np.nan)
        lines.append(f"| {label} | " + " | ".join("-" if np.isnan(c) else f"{c:.1f}" for c in cells) + " |")
    return lines


def key_table(rows):
    """Whether a stage's notes keep to semitones and to one key (judge_model.key_profile): mode is heard
    only in clips that do."""
    lines = ["| clips | pitches on the semitone grid (median) | notes in the best-fitting scale (median; 25th "
             "percentile) | degree 1 minus degree 6 weight: major prompts / minor prompts |", "|---|---|---|---|"]
    for label, (m, attrs, _) in rows.items():
        grid, share, lean = m["key"].T
        major = np.array([a["mode"] == "major" for a in attrs])
        lines.append(f"| {label} | {np.nanmedian(grid):.2f} | {np.nanmedian(share):.2f}; {np.nanpercentile(share, 25):.2f} | "
                     f"{np.nanmean(lean[major]):+.3f} / {np.nanmean(lean[~major]):+.3f} |")
    return lines


def floors(values, attrs):
    """'solo / drums': the median noise floor of each group (drum hits are noise-like, so the two groups lie
    ~50 dB apart on real clips and one median over both would jump between them)."""
    drums = np.array([a["drums"] for a in attrs])
    return " / ".join(f"{np.median(values[drums == d]):.1f}" if (drums == d).any() else "-" for d in (False, True))


def per_instrument(rows):
    """Share of clips heard as the prompted instrument, per prompted instrument, and the commonest mistake."""
    lines = ["| clips | " + " | ".join(toy_corpus.INSTRUMENTS) + " |", "|---" * 6 + "|"]
    for label, (m, attrs, _) in rows.items():
        cells = []
        for inst in toy_corpus.INSTRUMENTS:
            got = [p for p, a in zip(m["predicted"]["instrument"], attrs) if a["instrument"] == inst]
            wrong = [g for g in got if g != inst]
            common = max(set(wrong), key=wrong.count) if wrong else "-"
            cells.append(f"{np.mean([g == inst for g in got]):.0%} (else {common})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def score(args):
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)
    judge = load_judge(args.judge, args, log)
    # the real clips' rows: measured once, kept with the judge
    if "real_rows" not in judge or not has_every_column(judge["real_rows"][0]):
        judge["real_rows"] = real_rows(judge, log)
        torch.save(judge, args.judge)
        judge["mtime"] = os.path.getmtime(args.judge)
    rows, scale = judge["real_rows"]
    acc = judge["accuracy"]
    n_train, n_held, copies = judge["n"]
    lines = ["# Fidelity of the toy cascade, judged by classifiers trained on real clips", "",
             f"Judge (bench/judge_model.py): trained on {n_train} real clips of 80% of the tunes, each clean and in "
             f"{copies} randomly degraded copies"
             + ("; each attribute's classifier on its own features only" if judge.get("own_features") else "")
             + f"; accuracy on {n_held} real clips of the other tunes:", "",
             "| held-out real clips | " + " | ".join(jm.ATTRIBUTES) + " |", "|---" * 5 + "|"]
    lines += [f"| {col} | " + " | ".join(f"{v[n]:.0%}" for n in jm.ATTRIBUTES) + " |" for col, v in acc.items()]
    summary = {}
    for path in args.files:
        stored_row, stored = stored_rows(path, judge, log)
        knobs = {s: k for s, k in stored["knobs"].items() if k}
        summary[path] = (stored_row, stored["set"], knobs, stored["seeds"], len(stored["prompts"]))
    for path, (r, name, knobs, seeds, n) in summary.items():
        lines += ["", f"## {os.path.basename(path)}: prompt set `{name}` ({n} prompts), seeds {seeds}, knobs "
                  + (", ".join(f"{s} {k}" for s, k in knobs.items()) or "the presets'"), ""]
        shown = {**rows, **r} if path == args.files[0] else r          # the real rows above the first file's
        lines += table(shown, scale, judge)
        lines += ["", "Prompted instrument heard, per instrument:", ""] + per_instrument(r)
        lines += ["", "Notes in one key (mode is heard only where they keep to one):", ""] + key_table(shown)
        lines += ["", "Noise floor band by band (audio_measures.band_floors_db), median over solo clips:", ""]
        lines += band_table(shown)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="run the cascade on a prompt set and store every stage's output")
    g.add_argument("--set", choices=("eval", "tune", "check"), default="eval")
    g.add_argument("--out", required=True)
    g.add_argument("--ckpt-dir", default="checkpoints/toy")
    g.add_argument("--pipelines", default="wave,spec")
    g.add_argument("--seeds", default="0,1")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--from", dest="from_", metavar="FILE", help="a stored run whose earlier stages are kept")
    g.add_argument("--restart", help="with --from or --real: the stage to sample again from (and the ones after it)")
    g.add_argument("--real", action="store_true", help="the generator's output replaced by real clips of the "
                   "prompted attributes (the later stages' own fidelity); needs --restart")
    g.add_argument("--every", type=int, default=1, help="every K-th prompt of the set only (K = 1: all 40)")
    sample.add_knob_flags(g)
    s = sub.add_parser("score", help="judge stored runs, per stage")
    s.add_argument("files", nargs="*", help="files of `generate` (none: train the judge and measure real clips)")
    s.add_argument("--out", help="write the markdown report here too")
    s.add_argument("--judge", default=DEFAULT_JUDGE, help="the trained judge (trained and stored "
                   "here when missing)")
    s.add_argument("--train-clips", type=int, default=TRAINING["train_clips"])
    s.add_argument("--heldout-clips", type=int, default=TRAINING["heldout_clips"])
    s.add_argument("--copies", type=int, default=TRAINING["copies"], help="degraded copies of each training clip")
    s.add_argument("--judge-seed", type=int, default=TRAINING["judge_seed"])
    s.add_argument("--own-features", action="store_true", help="each attribute's classifier on its own features "
                   "only (judge_model.OWN_FEATURES): how much the feature choice moves the readings; use "
                   "another --judge file")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.command == "generate":
        if args.from_ and not os.path.isfile(args.from_):
            g.error(f"--from {args.from_}: no such file")
        if (args.from_ or args.real) and not args.restart:
            g.error("--from and --real need --restart STAGE")
        if args.every < 1:
            g.error("--every must be at least 1")
        generate(args, g)
    else:
        missing = [f for f in args.files if not os.path.isfile(f)]
        if missing:
            s.error(f"{missing[0]}: no such file")
        score(args)


if __name__ == "__main__":
    main()
