"""The toy cascade's results, laid out as the paper's: Tables 5 and 6 (section 4.4; `run_results`)
and the inference ablations of sections 4.5-4.6, Figures 2 and 3 (`run_ablations`).

    python evaluate.py results   [--ckpt-dir checkpoints/toy] [--n 40] [--out results]
    python evaluate.py ablations [--ckpt-dir checkpoints/toy] [--n 24] [--out results/ablations]

Both generate at 16 kHz on the held-out evaluation set (eval_set.py) and score with FAD and MuLan
similarity (metrics.py). Ablations vary one stage at a time, as Figure 2 does, from Table 3's
defaults (toy step counts); a first stage is scored at its own output (3.2 kHz audio, or its
log-mel), a second stage at 16 kHz with the first stage's default output held fixed, and all
configurations share prompts and noise seeds (common random numbers), so differences are not noise
between draws.
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import cascade
from data import fft_resample
from eval_set import (EVAL_SECONDS, HELDOUT_CAPTIONS, UsageError, build_reference, default_knobs, embedder_check,
                      eval_set, generate_first, generate_second, ground_truth_scores, load_embedders,
                      load_ground_truth, load_pipeline, score, stage_mels)
from metrics import log_mels
from plots import Panel, plot_panels


def markdown_table(header, rows):
    """A Markdown table; floats written with 3 decimals."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


# ----------------------------------------------------------------------------------------------
# `results`: Tables 5 and 6 for the toy cascade (section 4.4)

@dataclass
class ResultsConfig:
    """Flags of `evaluate.py results` (and, with other defaults, of `ablations`)."""
    ckpt_dir: str = field(default="checkpoints/toy", metadata={"help": "folder of STAGE.pt checkpoints (and mulan.pt)"})
    corpus: str = field(default="toy_data/corpus", metadata={"help": "toy corpus: manifest.jsonl, heldout_captions.jsonl"})
    mulan: str = field(default="", metadata={"help": "MuLan model (default: CKPT_DIR/mulan.pt)"})
    n: int = field(default=40, metadata={"help": "held-out prompts, one generated clip each per system"})
    refs: int = field(default=3, metadata={"help": "ground-truth clips per prompt in the FAD reference set"})
    seconds: float = field(default=None, metadata={"help": "generated length in s (default: the checkpoints' clip length)"})
    steps: int = field(default=None, metadata={"help": "steps of every stage (default: each stage's preset)"})
    batch: int = field(default=8, metadata={"help": "prompts generated together"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt draw and the noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    out: str = field(default="results", metadata={"help": "output folder (results.md, results.json)"})
    pipelines: str = field(default="wave,spec", metadata={"help": "the pipelines to score: wave, spec or wave,spec"})


SYSTEMS = (("Noise2Music Waveform", "wave", False), ("Noise2Music Spectrogram", "spec", False),
           ("Untrained Waveform", "wave", True), ("Untrained Spectrogram", "spec", True))


def check_config(cfg):
    """Flags argparse cannot check, and the files they name; fills the MuLan default."""
    bad_steps = cfg.steps is not None and cfg.steps < 1
    bad_seconds = cfg.seconds is not None and not 0 < cfg.seconds < float("inf")
    if cfg.n < 2 or cfg.refs < 2 or cfg.batch < 1 or cfg.threads < 1 or bad_steps or bad_seconds:
        raise UsageError("need --n >= 2, --refs >= 2, --batch >= 1, --threads >= 1, --steps >= 1, 0 < --seconds < inf")
    if not cfg.pipelines or not set(cfg.pipelines.split(",")) <= {"wave", "spec"}:
        raise UsageError(f"--pipelines {cfg.pipelines}: expected wave, spec or wave,spec")
    cfg.mulan = cfg.mulan or os.path.join(cfg.ckpt_dir, "mulan.pt")
    for path in (os.path.join(cfg.corpus, "manifest.jsonl"), os.path.join(cfg.corpus, HELDOUT_CAPTIONS), cfg.mulan):
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such file")
    return cfg


def _log(message):
    print(message, file=sys.stderr, flush=True)


def prepare(cfg):
    """Shared set-up: (eval set, embedders, generated seconds, scored seconds, prompt embeddings,
    ground truth [N x (refs + 1) x T] at 16 kHz)."""
    torch.set_num_threads(cfg.threads)
    es = eval_set(cfg.corpus, cfg.n, cfg.refs, cfg.seed)
    embedders = load_embedders(cfg.mulan)
    seconds = cfg.seconds or cascade.stage_spec("wave-generator", "toy").clip_seconds
    window = min(EVAL_SECONDS, seconds)
    gt = load_ground_truth([p for clips in es.clips for p in clips], window)
    text_emb = embedders["MuLan"].text(es.prompts)
    return es, embedders, seconds, window, text_emb, gt.reshape(cfg.n, cfg.refs + 1, -1)


def run_results(cfg: ResultsConfig, knobs=None):
    """Generate N clips per system at 16 kHz, score them, write OUT/results.md and results.json.

    :param knobs: {stage: cascade.Sampling} (sample.py's --STAGE-FIELD flags); None: each preset's,
        with cfg.steps, where given, for every stage.
    """
    t0 = time.time()
    es, embedders, seconds, window, text_emb, gt = prepare(check_config(cfg))
    ref = build_reference(embedders, text_emb, log_mels(gt.reshape(-1, gt.shape[-1]), 16000).reshape(
        cfg.n, cfg.refs + 1, 80, -1))
    rows = {"Ground truth audio": ground_truth_scores(ref, np.random.default_rng(cfg.seed))}
    check = embedder_check(cfg.corpus, embedders, seconds=window, seed=cfg.seed)
    steps = {}
    knobs = {s: k if k.steps is not None else dataclasses.replace(k, steps=cfg.steps)
             for s, k in (knobs or default_knobs()).items()}
    for name, pipeline, untrained in (s for s in SYSTEMS if s[1] in cfg.pipelines.split(",")):
        models, text_encoder = load_pipeline(cfg.ckpt_dir, pipeline, cfg.device, cfg.seed + 1000 if untrained else None)
        first = generate_first(models, text_encoder, es.prompts, pipeline, seconds, knobs, cfg.seed, cfg.batch)
        second = generate_second(models, text_encoder, es.prompts, pipeline, seconds, knobs, first, cfg.batch)
        spec = models[cascade.PIPELINES[pipeline][1]].spec
        rows[name] = {**score(embedders, stage_mels(spec, second.x, window), ref),
                      "seconds_per_clip": (first.seconds + second.seconds) / cfg.n}
        if not untrained:
            steps.update({s: {"trained_steps": m.step, "sampling_steps": len(cascade.resolve_sampling(m.spec, knobs[s])[0]),
                              "sampler": cascade.resolve_sampler(m.spec, knobs[s]),
                              "seconds_per_clip": round(out.seconds / cfg.n, 3)}
                          for (s, m), out in zip(models.items(), (first, second))})
        _log(f"results: {name}: {json.dumps({k: round(v, 4) for k, v in rows[name].items()})}")
    meta = {"command": " ".join(["python evaluate.py results", *_flags(cfg, ResultsConfig())]),
            "wall_seconds": round(time.time() - t0, 1), "threads": cfg.threads, "n": cfg.n, "refs": cfg.refs,
            "seconds": seconds, "scored_seconds": window, "stages": steps,
            "combinations": len({json.dumps(a, sort_keys=True) for a in es.attributes})}
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "prompts": es.prompts, "rows": rows, "embedder_check": check}, f, indent=1)
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(results_markdown(cfg, meta, rows, check))
    return rows


def _flags(cfg, default):
    """The flags of cfg that differ from default, as a command line would give them."""
    return [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(default, f.name) and f.name != "mulan"]


def results_markdown(cfg, meta, rows, check=()):
    """results.md: the set-up, Table 5 (FAD) and Table 6 (MuLan similarity)."""
    gt = rows["Ground truth audio"]
    systems = [name for name in rows if name != "Ground truth audio"]
    steps = ", ".join(f"{s} {v['trained_steps']} training steps / {v['sampling_steps']} sampling steps"
                      for s, v in meta["stages"].items())
    table5 = markdown_table(["Model", "FAD_MFCC", "FAD_MuLan", "s / clip"],
                            [["Ground truth audio (another fitting clip)", gt["FAD_MFCC"], gt["FAD_MuLan"], "-"]]
                            + [[n, rows[n]["FAD_MFCC"], rows[n]["FAD_MuLan"], f"{rows[n]['seconds_per_clip']:.1f}"]
                               for n in systems])
    table6 = markdown_table(["Model", "audio <-> gt-text", "audio <-> gt-audio"],
                            [["Ground truth audio", gt["sim_text"], f"{gt['sim_audio']:.3f} (1.000 with itself)"],
                             ["Randomly shuffled audio", gt["shuffled_sim_text"], gt["shuffled_sim_audio"]]]
                            + [[n, rows[n]["sim_text"], rows[n]["sim_audio"]] for n in systems])
    return f"""# Toy results: Tables 5 and 6 of the paper at toy scale

Made by `{meta['command']}` in {meta['wall_seconds'] / 60:.1f} min ({meta['threads']} CPU thread(s)).

- Evaluation set: {meta['n']} held-out phrasings from `{cfg.corpus}/{HELDOUT_CAPTIONS}` (never training
  captions), covering {meta['combinations']} attribute combinations; for each prompt, {meta['refs'] + 1} toy-corpus clips
  whose true attributes (tempo, instrument, mode, drums) are those the prompt names: {meta['refs']} form the FAD
  reference set ({meta['n'] * meta['refs']} clips), one more is "the ground truth audio" of the prompt.
- Protocol (section 4.3): the 16 kHz output of the second stage (cascader / vocoder; super-res skipped),
  its middle {meta['scored_seconds']:g} s of {meta['seconds']:g} s generated (the whole toy clip); one clip per prompt and
  system, Table 3 sampler settings; noise seeds shared across systems.
- Models: `{cfg.ckpt_dir}` ({steps}). Untrained = the same U-Nets with fresh random weights.
- FAD_MFCC: fixed MFCC statistics (no training; stands in for VGGish), per 1 s window. FAD_MuLan: our
  toy MuLan audio tower, one embedding per clip. MuLan similarity: cosine of unit embeddings.

## Table 5: FAD between the reference audio and the generated audio (lower is better)

{table5}

The ground-truth row is the floor at this N: FAD from {meta['n']} real clips that fit the prompts.

## Table 6: MuLan similarity with the prompt and with the ground-truth audio (higher is better)

{table6}

audio <-> gt-audio averages each clip's cosine with the {meta['refs']} reference clips of its prompt; for the
ground truth that is another real clip with the same attributes (the paper's 1.000 is a clip with itself).
Shuffled: the ground-truth clips paired with other prompts (mean of 20 derangements).
""" + embedder_check_markdown(check)


def embedder_check_markdown(check, n=48):
    """The embedder check's table (empty when there is none)."""
    if not check:
        return ""
    table = markdown_table(["sets differ in", "FAD_MFCC between / within", "FAD_MuLan between / within"],
                           [[label, *(f"{v[name][0]:.3f} / {v[name][1]:.3f}" for name in ("MFCC", "MuLan"))]
                            for label, v in check])
    return f"""
## What the embedders hear (real toy-corpus clips)

FAD between two sets of up to {n} real clips that differ in one attribute ("between"), beside FAD between
two disjoint sets that do not ("within"): an attribute an embedder hears has between >> within.

{table}
"""


# ----------------------------------------------------------------------------------------------
# `ablations`: sections 4.5 and 4.6, Figures 2 and 3 at toy scale

ABLATION_STAGES = ("wave-generator", "cascader", "spec-generator", "vocoder")   # super-res: skipped (16 kHz)
CFG_SCALES = (1.0, 2.0, 5.0, 10.0, 15.0)                  # Figure 2
SCHEDULES = ("back-heavy", "uniform", "front-heavy")      # Figure 2's B, U, F
STEP_FACTORS = (0.25, 0.5, 1.0, 2.0)                      # Figure 3: steps scaled around the default


@dataclass
class AblationConfig(ResultsConfig):
    """Flags of `evaluate.py ablations`."""
    n: int = field(default=24, metadata={"help": "held-out prompts, one clip each per setting"})
    out: str = field(default="results/ablations", metadata={"help": "output folder (ablations.md, PNGs)"})
    stages: str = field(default=",".join(ABLATION_STAGES), metadata={"help": "comma-separated stages to ablate"})


def sweep(spec, base_steps):
    """One stage's settings, one knob at a time: [(knob, value)]; the CFG grid only where text enters."""
    points = [("w", w) for w in CFG_SCALES] if spec.has_text else []
    points += [("schedule", s) for s in SCHEDULES]
    return points + [("steps", max(1, round(f * base_steps))) for f in STEP_FACTORS]


def resolved(spec, knob):
    """(steps, schedule, w) that a stage's Sampling knobs resolve to."""
    steps = len(cascade.resolve_sampling(spec, knob)[0])      # the sampler's own default steps
    return steps, knob.schedule or spec.step_schedule, spec.w if knob.w is None else knob.w


def run_ablations(cfg: AblationConfig):
    """Every stage's sweep, scored; writes OUT/ablations.md, ablations.json and three PNGs."""
    t0 = time.time()
    stages = [s for s in cfg.stages.split(",") if s]
    if not stages or set(stages) - set(ABLATION_STAGES):
        raise UsageError(f"--stages: choose among {','.join(ABLATION_STAGES)}")
    es, embedders, seconds, window, text_emb, gt = prepare(check_config(cfg))
    flat = gt.reshape(-1, gt.shape[-1])
    shape = (cfg.n, cfg.refs + 1, 80, -1)
    refs = {16000: build_reference(embedders, text_emb, log_mels(flat, 16000).reshape(shape)),
            3200: build_reference(embedders, text_emb, log_mels(fft_resample(flat, 16000, 3200), 3200).reshape(shape))}
    floors = {rate: ground_truth_scores(ref, np.random.default_rng(cfg.seed)) for rate, ref in refs.items()}
    records = []
    for pipeline in ("wave", "spec"):
        names = cascade.PIPELINES[pipeline][:2]
        if not set(names) & set(stages):
            continue
        models, text_encoder = load_pipeline(cfg.ckpt_dir, pipeline, cfg.device)
        base_knobs = default_knobs(cfg.steps)
        run = lambda knobs, k: (generate_first(models, text_encoder, es.prompts, pipeline, seconds, knobs, cfg.seed, cfg.batch)
                                if k == 0 else generate_second(models, text_encoder, es.prompts, pipeline, seconds, knobs,
                                                               base, cfg.batch))
        base = run(base_knobs, 0)
        for k, name in enumerate(names):
            if name in stages:
                spec = models[name].spec
                rate = 3200 if spec.sample_rate == 3200 else 16000
                records += ablate_stage(cfg, spec, k, base_knobs, base if k == 0 else None, run, window,
                                        embedders, refs[rate], t0)
    meta = {"command": " ".join(["python evaluate.py ablations", *_flags(cfg, AblationConfig())]),
            "wall_seconds": round(time.time() - t0, 1), "threads": cfg.threads, "n": cfg.n, "refs": cfg.refs,
            "seconds": seconds, "scored_seconds": window}
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "ablations.json"), "w") as f:
        json.dump({"meta": meta, "floors": floors, "records": records}, f, indent=1)
    figures = ablation_figures(cfg.out, records, floors)
    with open(os.path.join(cfg.out, "ablations.md"), "w") as f:
        f.write(ablations_markdown(meta, records, floors, figures))
    return records


def ablate_stage(cfg, spec, k, base_knobs, base, run, window, embedders, ref, t0):
    """Score each setting of one stage's sweep (each distinct setting generated once)."""
    scored, records = {}, []
    for knob, value in sweep(spec, cfg.steps or spec.steps):
        knobs = dict(base_knobs)
        knobs[spec.name] = dataclasses.replace(base_knobs[spec.name], **{knob: value})
        key = resolved(spec, knobs[spec.name])
        if key not in scored:
            out = base if (base is not None and key == resolved(spec, base_knobs[spec.name])) else run(knobs, k)
            scored[key] = {**score(embedders, stage_mels(spec, out.x, window), ref),
                           "seconds_per_clip": out.seconds / cfg.n}
        records.append({"stage": spec.name, "knob": knob, "value": value, "steps": key[0], "schedule": key[1],
                        "w": key[2], "scored_at": _representation(spec), **scored[key]})
        _log(f"ablations: {spec.name} {knob}={value}: FAD_MFCC {scored[key]['FAD_MFCC']:.3f}, "
             f"audio<->text {scored[key]['sim_text']:.3f}, {scored[key]['seconds_per_clip']:.2f} s/clip "
             f"({time.time() - t0:.0f} s elapsed)")
    return records


def _representation(spec):
    if spec.output == "spec":
        return "its log-mel output"
    return f"{spec.sample_rate / 1000:g} kHz audio"


def _floor(floors, stage):
    return floors[3200 if stage == "wave-generator" else 16000]


SCHEDULE_LETTERS = {"back-heavy": "B", "uniform": "U", "front-heavy": "F"}


def ablation_figures(out, records, floors):
    """cfg.png and schedule.png (Figure 2), steps.png (Figure 3): FAD_MFCC and MuLan audio<->text
    per stage; returns {figure file: caption}."""
    figures = {}
    specs = {"cfg.png": ("w", "CFG scale w (Figure 2)"), "schedule.png": ("schedule", "Step schedule (Figure 2)"),
             "steps.png": ("steps", "Steps: quality against inference time (Figure 3)")}
    for filename, (knob, title) in specs.items():
        stages = [s for s in ABLATION_STAGES if any(r["stage"] == s and r["knob"] == knob for r in records)]
        if not stages:
            continue
        panels = []
        for metric, label in (("FAD_MFCC", "FAD_MFCC (lower is better)"), ("sim_text", "MuLan audio-text (higher is better)")):
            for stage in stages:
                rs = [r for r in records if r["stage"] == stage and r["knob"] == knob]
                if knob == "steps":
                    xs = [r["seconds_per_clip"] for r in rs]
                    xlabels, notes = [f"{x:.2g} s" for x in xs], [r["steps"] for r in rs]
                else:
                    xs = list(range(len(rs)))
                    xlabels = [f"{r['w']:g}" if knob == "w" else SCHEDULE_LETTERS[r["schedule"]] for r in rs]
                    notes = None
                panels.append(Panel(stage, label, xs, [r[metric] for r in rs], xlabels,
                                    _floor(floors, stage)[metric], notes))
        plot_panels(os.path.join(out, filename), title, panels, cols=len(stages),
                    footer="; labels: steps; x: seconds per clip" if knob == "steps" else "")
        figures[filename] = title
    return figures


def _show(value):
    """A setting as the report writes it: 10.0 -> '10', 'uniform' -> 'uniform'."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def ablations_markdown(meta, records, floors, figures):
    """ablations.md: set-up, figures, one line of findings per sweep, and the full tables."""
    lines = ["# Inference ablations at toy scale (sections 4.5-4.6, Figures 2 and 3)", "",
             f"Made by `{meta['command']}` in {meta['wall_seconds'] / 60:.1f} min ({meta['threads']} CPU thread(s)).", "",
             f"{meta['n']} held-out prompts (as in results.md), one clip per prompt and setting. One knob at a time from "
             "Table 3's defaults (toy step counts); a generator is scored at its own output (the wave generator's "
             "3.2 kHz audio against ground truth taken down to 3.2 kHz; the spectrogram generator's log-mel), a second "
             "stage at 16 kHz with the generator's default output held fixed; every setting shares the prompts and "
             "the noise seeds. Steps are scaled by " + ", ".join(f"{f:g}" for f in STEP_FACTORS) + " around the default "
             "(Table 7's shapes resampled). GT in the plots: the ground truth (another real clip that fits the prompt, at "
             "the same representation), written under each panel's title and dashed where it falls inside the range.", ""]
    lines += [f"![{caption}]({name})" for name, caption in figures.items()] + ["", "## Findings", ""]
    for stage in ABLATION_STAGES:
        for knob in ("w", "schedule", "steps"):
            rs = [r for r in records if r["stage"] == stage and r["knob"] == knob]
            if rs:
                f, s = min(rs, key=lambda r: r["FAD_MFCC"]), max(rs, key=lambda r: r["sim_text"])
                lines.append(f"- {stage}, {knob}: best FAD_MFCC at {_show(f['value'])} ({f['FAD_MFCC']:.3f}; range "
                             f"{min(r['FAD_MFCC'] for r in rs):.3f}-{max(r['FAD_MFCC'] for r in rs):.3f}), best audio<->text at "
                             f"{_show(s['value'])} ({s['sim_text']:.3f}; range {min(r['sim_text'] for r in rs):.3f}-"
                             f"{max(r['sim_text'] for r in rs):.3f})")
    lines += ["", "## Tables", ""]
    for stage in ABLATION_STAGES:
        rs = [r for r in records if r["stage"] == stage]
        if not rs:
            continue
        fl = _floor(floors, stage)
        lines += [f"### {stage} (scored on {rs[0]['scored_at']})", "",
                  f"Ground truth: FAD_MFCC {fl['FAD_MFCC']:.3f}, FAD_MuLan {fl['FAD_MuLan']:.3f}, audio<->text "
                  f"{fl['sim_text']:.3f}, audio<->audio {fl['sim_audio']:.3f}; shuffled: audio<->text "
                  f"{fl['shuffled_sim_text']:.3f}.", "",
                  markdown_table(["knob", "value", "steps", "schedule", "w", "s / clip", "FAD_MFCC", "FAD_MuLan",
                                  "audio<->text", "audio<->audio"],
                                 [[r["knob"], _show(r["value"]), r["steps"],
                                   r["schedule"], f"{r['w']:g}",
                                   f"{r['seconds_per_clip']:.2f}", r["FAD_MFCC"], r["FAD_MuLan"], r["sim_text"],
                                   r["sim_audio"]] for r in rs]), ""]
    return "\n".join(lines)
