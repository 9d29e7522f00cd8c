"""Text in, music out: inference through the Noise2Music cascade (section 4.2).

    python sample.py "lo-fi guitar ballad"                         # -> sample.wav, 24 kHz
    python sample.py "fast drums and bass" --pipeline wave --seed 3 --out bass.wav
    python sample.py --prompts prompts.txt --out-dir outs/          # 000.wav, 001.wav, ...
    python sample.py "slow organ chorale" --save-stages --vocoder-steps 12 --spec-generator-w 5
    python sample.py "fast flute melody" --seconds 30                      # past the training length
    python sample.py "flute and drums" --stereo                    # two-channel 24 kHz (stereo super-res)
    python sample.py "slow bass line" --continue mine.wav --seconds 12      # also --inpaint F --region A:B,
                                                                            # --init F --strength S, --upsample F

Defaults follow Table 3 (step schedule, gamma, CFG scale w per stage) with the step counts of the
checkpoint's scale (Table 7's lengths at full scale, fewer for the toy models); the sampler is
eq. 4 (diffusion.sample) at full scale and DPM-Solver++(2M) for the toy models (`--STAGE-sampler`),
on the EMA weights, with classifier-free guidance followed by dynamic clipping of the implied x_0 (not for the spectrogram generator: cascade.py says why). The toy
vocoder also projects each x_0 estimate onto its log-mel's magnitude (`--vocoder-project`; not in
the paper: cascade.mel_projection). Same prompt, seed and settings give the same
audio on one machine.

Choices: an empty prompt is generated unconditionally (the cross-attention output zeroed, as for
the 10% of training examples without text), with a note on stderr. A prompt longer than the
stage's token length is truncated, with a warning. The 24 kHz output is scaled down only if its
peak would clip. A knob of a stage the run does not use (--cascader-steps with --pipeline spec) is
ignored, with a note.
"""
import argparse
import dataclasses
import math
import os
import sys

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import cascade
import checks
import data
import diffusion
import plots
import pseudolabel
import text

MIN_SECONDS = 0.1       # the vocoder's mel projection needs more than half its 1024-sample STFT window
MIN_REGION = 0.1        # an inpainted region shorter than this is mostly the 20 ms cross-fades
MAX_SECONDS = 600.0
MAX_W = 100.0           # CFG scales past this only amplify the model's error
MAX_MEL_FIT = 1000      # Richardson-Lucy rounds per step: more change nothing but the time


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default said once: not added where the help says its own, or where there is none."""

    def _get_help_string(self, action):
        none = action.default is None or action.default is False or action.default == ""
        if none or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = data.OneLineParser(description="Generate music from text with the Noise2Music cascade.",
                          formatter_class=HelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text prompt (or use --prompts FILE)")
    p.add_argument("--prompts", help="a file of prompts, one per line")
    p.add_argument("--out", help="output WAV for a single prompt (default: sample.wav)")
    p.add_argument("--out-dir", help="output folder for --prompts: 000.wav, 001.wav, ...")
    p.add_argument("--pipeline", choices=tuple(cascade.PIPELINES), default=None,
                   help=f"waveform or spectrogram path (default: {cascade.DEFAULT_PIPELINE}; --upsample: wave)")
    p.add_argument("--seconds", type=float, help="clip length (default: the stages' training length)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--ckpt-dir", default="checkpoints/toy", help="folder with one STAGE.pt per stage")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--save-stages", action="store_true", help="also write each stage's output as sound and picture")
    p.add_argument("--stereo", action="store_true", help="end in the stereo super-res (stereo.pt; not in the paper): "
                   "a two-channel 24 kHz WAV whose mix-down is the mono cascade's output; default mono")
    add_knob_flags(p)
    add_audio_flags(p)
    return p


def add_audio_flags(p):
    """The audio-in flags (cascade.py's note on audio in): continuation, inpainting, SDEdit, up-sampling."""
    g = p.add_argument_group("audio in (any file soundfile reads; any rate, channels mixed down)")
    g.add_argument("--continue", dest="continue_", metavar="FILE", help="the output starts with this audio and goes on "
                   "(to --seconds in all, default: one generator window more)")
    g.add_argument("--inpaint", metavar="FILE", help="regenerate --region of this audio, keep the rest exactly")
    g.add_argument("--region", metavar="START:END", help="with --inpaint: the seconds to regenerate")
    g.add_argument("--init", metavar="FILE", help="audio-to-audio (SDEdit): start the generator from this audio")
    g.add_argument("--strength", type=float, default=None,
                   help=f"with --init: the noise time S in (0, 1] it starts from (default {DEFAULT_STRENGTH:g}; "
                   "1 keeps almost nothing)")
    g.add_argument("--upsample", metavar="FILE", help="text-guided up-sampling of low-rate or muffled audio "
                   "(the waveform path's cascader and super-res; super-res alone for 16 kHz or more); the file's "
                   "band is kept exactly and the band above it is generated")
    g.add_argument("--overlap", type=float, default=cascade.DEFAULT_OVERLAP,
                   help="long-form and continuation: seconds of each generator window that are the previous audio")
    g.add_argument("--repaint-jump", type=int, default=DEFAULT_JUMP,
                   help="generator's known-region sampler: RePaint's jump length (0: plain replacement)")
    g.add_argument("--repaint-resample", type=int, default=DEFAULT_RESAMPLE,
                   help="generator's known-region sampler: RePaint's number of resamplings r")
    g.add_argument("--reconstruction-guidance", type=float, default=None, metavar="W",
                   help="generator's known-region sampler: the weight of reconstruction guidance, which steers the "
                   "new part by the gradient of its fit to the known part, at about twice the generator's time "
                   f"(0: none; default {DEFAULT_GUIDANCE:g} for --inpaint and for --continue with --no-describe, else 0)")
    g.add_argument("--describe", action=argparse.BooleanOptionalAction, default=None,
                   help="add the given audio's pseudo-labels to each prompt: for each label set, the label the MuLan "
                   "model (CKPT_DIR/mulan.pt) hears best in it, unless the prompt names one of that set (toy sets: "
                   "tempo, instrument, drums); default: on for --continue and --inpaint where CKPT_DIR has mulan.pt")
    g.add_argument("--labels", metavar="FILE", help="with --describe: the label sets, a JSON file "
                   "{\"set\": [\"label\", ...], ...} (default: the toy's)")


DEFAULT_STRENGTH = 0.6
# Plain replacement by default: on the tuning seeds of bench/beyond.py, long-form windows joined most
# smoothly with a 2 s overlap and replacement (bench/results_beyond.md); RePaint is --repaint-jump 2
# --repaint-resample 3 (three times the generator's steps). Reconstruction guidance at w = 3 for
# inpainting, and for continuation when the prompt is not given the clip's labels (--no-describe): on
# the tuning clips (seeds from 1000) it gave the highest mean share of new parts in which the judge
# hears the given clip's tempo, instrument and drums (w = 8 tied, with rougher joins). With the labels
# (the default where a MuLan is at hand) the prompt carries the instrument and drums, and a continuation
# by plain replacement keeps the tempo more often, in about 3/4 of the time (tuning clips: tempo 85% against 65%).
# Long-form keeps plain replacement: with guidance its windows followed their prompts less often and
# drifted out of the data's range (bench/results_beyond.md).
DEFAULT_JUMP, DEFAULT_RESAMPLE = 0, 1
DEFAULT_GUIDANCE = 3.0
MIN_AUDIO_SECONDS = 0.5
AUDIO_FLAGS = {"continue_": "--continue", "inpaint": "--inpaint", "init": "--init", "upsample": "--upsample"}


def read_audio_input(flag, path, p):
    """The file as a (T,) float tensor at the output rate, and its own rate; p.error on a bad file."""
    try:
        wave, rate = data.decode_audio(path)
    except data.AudioError as e:
        p.error(f"{flag} {path}: {e}")
    seconds = len(wave) / rate
    if seconds < MIN_AUDIO_SECONDS:
        p.error(f"{flag} {path}: too short ({seconds:.3g} s; at least {MIN_AUDIO_SECONDS:g} s)")
    if seconds > MAX_SECONDS:
        p.error(f"{flag} {path}: too long ({seconds:.0f} s; at most {MAX_SECONDS:g} s)")
    wave24 = data.fft_resample(torch.from_numpy(wave.astype(np.float64)), rate, cascade.GIVEN_RATE).float()
    return wave24, rate


def parse_region(text, seconds, p):
    """(start, end) seconds from "START:END", inside a clip of `seconds`; p.error otherwise."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        p.error(f"--region {text}: expected START:END in seconds, e.g. 1.5:2.5")
    if not start < end:
        p.error(f"--region {text}: START must come before END")
    if not 0 <= start < end <= seconds:
        p.error(f"--region {text}: outside the clip (0 <= START < END <= {seconds:.3f} s)")
    if end - start < MIN_REGION:
        p.error(f"--region {text}: at least {MIN_REGION:g} s must be regenerated")
    return start, end


def check_audio_args(args, p, argv=None):
    """args.task: a cascade.AudioTask for the audio-in flags (or None), read and checked before any model."""
    given = [flag for key, flag in AUDIO_FLAGS.items() if getattr(args, key)]
    if len(given) > 1:
        p.error(f"give at most one of {', '.join(AUDIO_FLAGS.values())} (got {' and '.join(given)})")
    if args.region is not None and not args.inpaint:
        p.error("--region goes with --inpaint")
    if args.inpaint and args.region is None:
        p.error("--inpaint needs --region START:END")
    if args.strength is not None and not args.init:
        p.error("--strength goes with --init")
    if args.strength is not None and not 0 < args.strength <= 1:
        p.error("--strength must be in (0, 1]")
    if not args.overlap >= 0 or args.repaint_jump < 0 or args.repaint_resample < 1:     # `not >=` refuses NaN
        p.error("--overlap and --repaint-jump must be >= 0 and --repaint-resample >= 1")
    if args.reconstruction_guidance is not None and not 0 <= args.reconstruction_guidance < math.inf:
        p.error("--reconstruction-guidance must be a number >= 0")
    args.fit = cascade.KnownFit(args.repaint_jump, args.repaint_resample, args.reconstruction_guidance or 0.0)
    args.task = None
    if (args.describe is not None or args.labels) and not given:
        p.error(f"--describe and --labels go with one of {', '.join(AUDIO_FLAGS.values())}")
    if args.labels and args.describe is False:
        p.error("--labels goes with --describe")
    if not given:
        return
    if args.seconds and not args.continue_:
        p.error(f"--seconds does not go with {given[0]} (the output is as long as the given clip)")
    key = next(k for k, f in AUDIO_FLAGS.items() if f == given[0])
    wave, rate = read_audio_input(given[0], getattr(args, key), p)
    mode = "continue" if key == "continue_" else key
    task = cascade.AudioTask(mode, wave, rate, strength=args.strength or DEFAULT_STRENGTH, overlap=args.overlap,
                             fit=args.fit)
    if mode == "inpaint":
        task.region = parse_region(args.region, task.seconds, p)
    if mode == "continue" and args.seconds and args.seconds <= task.seconds:
        p.error(f"--seconds {args.seconds:g} must be longer than the --continue clip ({task.seconds:.3f} s)")
    if mode == "upsample":
        if args.pipeline == "spec":
            p.error("--upsample runs the waveform path's cascader and super-res; --pipeline spec does not go with it")
        args.pipeline = "wave"
    if args.stereo and mode in ("continue", "inpaint"):
        p.error(f"--stereo does not go with {given[0]} (the given clip, kept exactly, is read as mono)")
    args.task = task
    mulan = os.path.join(args.ckpt_dir, "mulan.pt")
    if args.describe is None:           # the default: keep what the given clip sounds like, where a MuLan is at hand
        args.describe = bool(args.labels) or (mode in ("continue", "inpaint") and os.path.isfile(mulan))
    if args.describe:                   # MuLan listens later, after the checks that need the models (describe_prompts)
        try:
            args.label_sets = pseudolabel.read_label_sets(args.labels) if args.labels else pseudolabel.TOY_LABEL_SETS
        except pseudolabel.UsageError as e:
            p.error(f"--describe: {e}")
        if not os.path.isfile(mulan):
            p.error(f"--describe: {mulan}: not found")
    if args.reconstruction_guidance is None and (mode == "inpaint" or mode == "continue" and not args.describe):
        task.fit = args.fit = dataclasses.replace(args.fit, guidance=DEFAULT_GUIDANCE)


def describe_prompts(args, p):
    """The prompts with the given clip's pseudo-labels (args.label_sets, read by check_audio_args) added
    (pseudolabel.hear_labels, add_labels), run after every check; p.error when the MuLan model cannot be read."""
    try:
        model = pseudolabel.load_mulan(os.path.join(args.ckpt_dir, "mulan.pt"))
    except pseudolabel.MulanLoadError as e:
        p.error(f"--describe: {e}")
    heard = pseudolabel.hear_labels(model, args.task.audio[None], cascade.GIVEN_RATE, args.label_sets)[0]
    return [pseudolabel.add_labels(prompt, heard, args.label_sets) for prompt in args.prompt_list]


def check_against_models(task, first, p):
    """Checks that need the generator's window length (read from its checkpoint, before sampling)."""
    window = first.spec.clip_seconds
    if task.overlap >= window:
        p.error(f"--overlap {task.overlap:g} must be shorter than the generator's window ({window:g} s)")
    if task.mode == "inpaint" and task.region[1] - task.region[0] >= window:
        p.error(f"--region: the region must be shorter than the generator's window ({window:g} s)")


def add_knob_flags(p):
    """--STAGE-FIELD for each stage and its `cascade.Sampling` fields (also used by bench/adherence.py)."""
    for stage in cascade.STAGES:
        for f in _knob_fields(stage):
            whole = f.name in ("steps", "keep_band", "mel_fit")
            kind = str if f.name in ("schedule", "sampler") else (int if whole else float)
            default = "Table 3 / the checkpoint's scale"
            if f.name == "sampler":
                p.add_argument(f"--{stage}-sampler", choices=diffusion.SAMPLERS, default=None, metavar="NAME",
                               help=f"{stage}: sampler, one of {', '.join(diffusion.SAMPLERS)} (default: "
                               f"{cascade.stage_spec(stage, 'toy').sampler} at toy scale, ancestral (eq. 4) at full; "
                               "audio-in modes always use eq. 4 where part of the output is given)")
                continue
            if f.name == "schedule":
                default = (f"Table 3 / the checkpoint's scale; a name ({', '.join(diffusion.STEP_SCHEDULES)}) "
                           "or a file of deltas")
            if f.name == "keep_band":
                default = f"{int(cascade.stage_spec(stage).keep_band)}; 1 = the input's band is kept exactly"
            if f.name == "project":
                default = (f"{cascade.stage_spec(stage).project:g} at toy scale, 1 = never at full; x_0 estimates "
                           "take the log-mel's magnitude at times above it")
            if f.name == "mel_fit":
                default = (f"{cascade.stage_spec(stage).mel_fit}; the projected magnitude is the estimate's own, fitted "
                           "to the log-mel in this many rounds; 0 = the log-mel's smooth magnitude")
            p.add_argument(f"--{stage}-{f.name.replace('_', '-')}", type=kind, default=None,
                           help=f"{stage}: {f.name} (default: {default})")


def _knob_fields(stage):
    """The Sampling fields that mean something for `stage` (aug: stages with an input; keep_band: the
    cascaders; project, mel_fit: the vocoder)."""
    spec = cascade.stage_spec(stage)
    has_input = {"aug": spec.cond_rate or spec.aligned, "keep_band": spec.cond_rate, "project": spec.aligned,
                 "mel_fit": spec.aligned}
    return [f for f in dataclasses.fields(cascade.Sampling) if has_input.get(f.name, True)]


def parse_args(argv=None):
    """The parsed flags, every one checked before any model is read (p.error: one line, exit 2)."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.prompt_list = read_prompts(args)
        checks.check_number("--seconds", args.seconds, MIN_SECONDS, MAX_SECONDS)
        checks.check_seed("--seed", args.seed)
        checks.check_seed("--seed (plus one per prompt)", args.seed + len(args.prompt_list))
        if args.batch_size < 1:
            raise checks.InputError("--batch-size must be at least 1")
        args.device = checks.resolve_device(args.device)
        args.knobs = _read_knobs(args)
    except checks.InputError as e:
        p.error(str(e))
    check_audio_args(args, p)
    args.pipeline = args.pipeline or cascade.DEFAULT_PIPELINE
    try:
        check_outputs(args)                 # last: it may create the output folder
    except checks.InputError as e:
        p.error(str(e))
    return args, p


def idle_knobs(args):
    """[(flag, why)]: the --STAGE-* flags given for stages the run does not use (e.g. --cascader-steps on
    the spectrogram path, --wave-generator-steps with --upsample)."""
    task = getattr(args, "task", None)
    if task is not None and task.mode == "upsample":
        used = cascade.task_stages(task, args.pipeline, args.stereo)
        why = f"--upsample of {task.rate / 1000:g} kHz audio runs only {' and '.join(used)}"
    else:
        used = cascade.pipeline_stages(args.pipeline, args.stereo)
        why = f"--pipeline {args.pipeline} does not run that stage"
    return [(f"--{stage}-{name.replace('_', '-')}", why) for stage, knob in args.knobs.items() if stage not in used
            for name, value in dataclasses.asdict(knob).items() if value is not None]


def read_prompts(args):
    """The prompts: PROMPT, or the lines of --prompts FILE; text that is not UTF-8 is refused."""
    if (args.prompt is None) == (args.prompts is None):
        raise checks.InputError("give one PROMPT or --prompts FILE")
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = [line.rstrip("\r\n") for line in f]
        except UnicodeDecodeError as e:
            raise checks.InputError(f"--prompts {args.prompts}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise checks.InputError(f"--prompts {args.prompts}: {e.strerror or e}") from None
        if not prompts:
            raise checks.InputError(f"--prompts {args.prompts}: the file is empty")
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:      # undecodable command-line bytes arrive as lone surrogates
            raise checks.InputError(f"prompt {i} is not UTF-8 text") from None
    return prompts


def check_outputs(args):
    """--out FILE.wav for one prompt, --out-dir DIR for --prompts: writable, checked before any work."""
    if args.prompts:
        if args.out is not None:
            raise checks.InputError("--prompts writes into --out-dir DIR, not --out")
        if not args.out_dir:
            raise checks.InputError("--prompts needs --out-dir")
        checks.check_writable_dir("--out-dir", args.out_dir)
        args.out_paths = [os.path.join(args.out_dir, f"{i:03d}.wav") for i in range(len(args.prompt_list))]
    else:
        if args.out_dir is not None:
            raise checks.InputError("--out-dir goes with --prompts FILE; one prompt is written to --out FILE.wav")
        args.out = args.out or "sample.wav"
        checks.check_output_file("--out", args.out, ".wav")
        args.out_paths = [args.out]


def read_knobs(args, p):
    """{stage: cascade.Sampling} from the flags of `add_knob_flags`, checked (p.error on a bad one)."""
    try:
        return _read_knobs(args)
    except checks.InputError as e:
        p.error(str(e))


def _read_knobs(args):
    knobs = {}
    for stage in cascade.STAGES:
        values = {f.name: getattr(args, f"{stage}_{f.name}".replace("-", "_")) for f in _knob_fields(stage)}
        flag = lambda name: f"--{stage}-{name.replace('_', '-')}"
        if values["steps"] is not None and values["steps"] < 1:
            raise checks.InputError(f"{flag('steps')} must be at least 1")
        checks.check_number(flag("gamma"), values["gamma"], 0, 1)
        checks.check_number(flag("w"), values["w"], 0, MAX_W)
        checks.check_number(flag("aug"), values.get("aug"), 0, 1)
        checks.check_number(flag("project"), values.get("project"), 0, 1)
        checks.check_number(flag("mel_fit"), values.get("mel_fit"), 0, MAX_MEL_FIT)
        checks.check_number(flag("clip"), values["clip"], 0, 1, high_open=True)
        if values.get("keep_band") not in (None, 0, 1):
            raise checks.InputError(f"{flag('keep_band')} must be 0 or 1")
        sched = values["schedule"]
        if sched and sched not in diffusion.STEP_SCHEDULES and not os.path.isfile(sched):
            raise checks.InputError(f"{flag('schedule')} {sched}: not a schedule name "
                                    f"({', '.join(diffusion.STEP_SCHEDULES)}) or a file of deltas")
        knobs[stage] = cascade.Sampling(**values)
        if sched:                   # the schedule as the sampler will read it: a file's numbers, a name's stage
            try:
                cascade.resolve_sampling(cascade.stage_spec(stage), knobs[stage])
            except ValueError as e:
                raise checks.InputError(f"{flag('schedule')} {sched}: {e}") from None
    return knobs


def load_models(args, parser, device):
    """The three stages of the pipeline and the text encoder named by the generator's checkpoint."""
    stages = {}
    names = cascade.PIPELINES[args.pipeline]
    stereo = getattr(args, "stereo", False)      # callers (app.py, benches) may pass a Namespace without it
    names = names[:2] + ((cascade.STEREO,) if stereo else names[2:])     # --stereo: the stereo super-res last
    for name in names:
        path = os.path.join(args.ckpt_dir, f"{name}.pt")
        if not os.path.isfile(path):
            parser.error(f"missing checkpoint {path} (train it with `python train.py --stage {name}`)")
    for name in names:
        path = os.path.join(args.ckpt_dir, f"{name}.pt")
        try:
            stages[name] = cascade.StageModel(path, device, torch.bfloat16 if device.type == "cuda" else None, name)
        except checks.InputError as e:
            parser.error(str(e))
        except Exception as e:
            parser.error(f"cannot read checkpoint {path}: {checks.load_problem(e)}")
    t5 = stages[cascade.PIPELINES[args.pipeline][0]].t5
    try:
        tokenizer, encoder = text.load_t5(t5, device=device)
    except (text.T5LoadError, OSError) as e:
        parser.error(f"cannot load the text encoder: {e}")
    return stages, (tokenizer, encoder)


def check_prompts(prompts, tokenizer, stages):
    """Say which prompts are empty (unconditional) or will be truncated at the token limit."""
    limit = min(s.spec.token_len for s in stages.values() if s.spec.has_text)
    for i, p in enumerate(prompts):
        if not p.strip():
            print(f"note: prompt {i} is empty: generating it unconditionally", file=sys.stderr)
        elif len(tokenizer.sp.encode(p)) + 1 > limit:
            print(f"warning: prompt {i} is longer than {limit} tokens and is truncated", file=sys.stderr)


def write_wave(path, wave, rate, keep_level=False):
    """Write finite float audio as 16-bit WAV, scaled down only where the peak would clip; written
    whole to a temporary file and renamed, so the path never holds a partial file. With keep_level
    (continuation, inpainting: the given audio must come out as it went in) samples past full scale
    are clipped instead, and the file is not scaled."""
    wave = np.asarray(wave, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise FloatingPointError(f"{path}: the audio holds NaN or infinite values")
    peak = np.abs(wave).max(initial=0.0)
    if peak > 0.999 and keep_level:
        wave = np.clip(wave, -0.999, 0.999)
    elif peak > 0.999:
        wave = wave * (0.999 / peak)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checks.atomic_write(path, lambda tmp: sf.write(tmp, wave, rate, subtype="PCM_16", format="WAV"))


def save_stages(base, keep, stages):
    """base_STAGE.wav for audio intermediates, and base_STAGE.png, the log-mel picture of each."""
    for name, x in keep.items():
        spec = stages[name].spec
        if spec.output == "spec":
            plots.save_spectrogram(f"{base}_{name}.png", x.numpy(), name)
        elif spec.channels == 2:        # mid and side: a stereo WAV, and the mid's picture
            write_wave(f"{base}_{name}.wav", cascade.mid_side_to_lr(x).numpy().T, spec.sample_rate)
            plots.save_wave_spectrogram(f"{base}_{name}.png", x[0].numpy(), spec.sample_rate, f"{name} (mid)")
        else:
            write_wave(f"{base}_{name}.wav", x[0].numpy(), spec.sample_rate)
            plots.save_wave_spectrogram(f"{base}_{name}.png", x[0].numpy(), spec.sample_rate, name)


def main(argv=None):
    args, parser = parse_args(argv)
    device = args.device
    for path in args.out_paths:
        checks.remove_stale_temporaries(path)
    stages, text_encoder = load_models(args, parser, device)
    first = stages[cascade.PIPELINES[args.pipeline][0]]
    seconds = args.seconds or first.spec.clip_seconds
    task = args.task
    if task is None and seconds > first.spec.clip_seconds:         # long-form: generator windows
        task = cascade.AudioTask("long", overlap=args.overlap, fit=args.fit)
    if task is not None:
        check_against_models(task, first, parser)
    if args.task is not None and args.describe:
        args.prompt_list = describe_prompts(args, parser)
        print("prompts with the given audio's labels:\n" + "\n".join(args.prompt_list), file=sys.stderr)
    check_prompts(args.prompt_list, text_encoder[0], stages)
    for flag, why in idle_knobs(args):      # after every check: a refusal stays one line
        print(f"note: {flag} is ignored: {why}", file=sys.stderr)

    def progress(name):
        return lambda steps: tqdm(steps, desc=name, leave=False, disable=None)

    outputs = []
    for start in range(0, len(args.prompt_list), args.batch_size):
        batch = args.prompt_list[start:start + args.batch_size]
        keep = {}
        try:
            # reconstruction guidance takes gradients through the generator, which inference_mode forbids
            with torch.no_grad() if task is not None and task.fit.guidance > 0 else torch.inference_mode():
                if task is None:
                    audio = cascade.cascade_generate(stages, text_encoder, batch, args.pipeline, seconds,
                                                     args.seed + start, args.knobs, device, progress, keep,
                                                     stereo=args.stereo)
                else:
                    audio = cascade.audio_generate(stages, text_encoder, batch, args.pipeline, args.seconds,
                                                   args.seed + start, args.knobs, task, device, progress, keep,
                                                   stereo=args.stereo)
        except FloatingPointError as e:     # NaN or infinity from a stage: say which, write nothing
            parser.exit(2, f"{parser.prog}: error: {e} (try fewer extreme knobs, or check that checkpoint)\n")
        for i, wave in enumerate(audio):
            path = args.out_paths[start + i]
            keep_level = task is not None and task.mode in ("continue", "inpaint")
            write_wave(path, wave.numpy().T, 24000, keep_level)     # (T,) mono, or (T, 2) left, right
            if args.save_stages:
                save_stages(os.path.splitext(path)[0], {k: v[i] for k, v in keep.items()}, stages)
            outputs.append(path)
    print("\n".join(outputs))
    return outputs


if __name__ == "__main__":
    main()
