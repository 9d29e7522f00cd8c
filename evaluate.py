"""Evaluation of Noise2Music (sections 4.3-4.6 of Huang et al. 2023): the command line.

    python evaluate.py analyze FILE...                 # onset rate, pitch, percussive ratio
    python evaluate.py fad DIR_A DIR_B [--embedder mfcc|mulan]
    python evaluate.py results   [--ckpt-dir checkpoints/toy] [--n 40] [--out results]
    python evaluate.py ablations [--ckpt-dir checkpoints/toy] [--n 24] [--out results/ablations]

Where the pieces live:
- audio_measures.py: the measurements of the toy vocabulary (onset rate, median pitch,
  percussive ratio) that `analyze` prints and bench/adherence.py scores prompt pairs with;
- metrics.py: FAD (section 4.3.2), the MFCC and MuLan embedders, MuLan similarity (Table 6);
- eval_set.py: the held-out evaluation set, its ground truth, generation at 16 kHz through
  cascade's first two stages, and scoring;
- reports.py: `results` (Tables 5 and 6) and `ablations` (Figures 2 and 3), their Markdown and plots.
"""
import dataclasses
import os

import numpy as np

import audio_measures
import sample
from data import AudioError, OneLineParser, add_dataclass_flags as add_fields, decode_audio, fft_resample, not_a_file
from eval_set import EVAL_SECONDS, UsageError, load_embedders, middle
from metrics import MfccEmbedder, fad, log_mels
from reports import AblationConfig, ResultsConfig, run_ablations, run_results


# ----------------------------------------------------------------------------------------------
# `fad`: FAD between two folders of audio files

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def audio_files(folder):
    """The audio files of a folder, sorted."""
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a folder")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(AUDIO_EXTENSIONS))
    if len(files) < 2:
        raise UsageError(f"{folder}: FAD needs at least 2 audio files")
    return files


def folder_embeddings(files, embed, seconds):
    """Every file's middle `seconds` at 16 kHz, embedded: [sum of K_i x E] (clips may differ in length)."""
    rows = []
    for path in files:
        try:
            wave, rate = decode_audio(path)
        except AudioError as e:
            raise UsageError(f"{path}: {e}") from None
        wave = middle(fft_resample(wave.astype(np.float64), rate, 16000), 16000, seconds)
        if len(wave) < 320:
            raise UsageError(f"{path}: shorter than 20 ms")
        emb = embed(log_mels(wave[None], 16000))
        rows.append(emb.reshape(-1, emb.shape[-1]))
    return np.concatenate(rows)


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser():
    parser = OneLineParser(prog="evaluate.py", description=(
        "Noise2Music evaluation (sections 4.3-4.6): audio measurements, FAD, MuLan similarity, the toy "
        "results (Tables 5, 6) and the inference ablations (Figures 2, 3)."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    an = sub.add_parser("analyze", help="onset rate, median pitch and percussive ratio of files")
    an.add_argument("files", nargs="+", metavar="FILE", help="audio files soundfile can read")
    fd = sub.add_parser("fad", help="FAD between two folders of audio files", description=(
        "FAD between the audio files of two folders (each file at 16 kHz, its middle --seconds)."))
    fd.add_argument("folder_a", metavar="DIR_A")
    fd.add_argument("folder_b", metavar="DIR_B")
    fd.add_argument("--embedder", choices=("mfcc", "mulan"), default="mfcc", help="audio embedder (default: mfcc)")
    fd.add_argument("--mulan", default="checkpoints/toy/mulan.pt", help="MuLan model for --embedder mulan")
    fd.add_argument("--seconds", type=float, default=EVAL_SECONDS, help="middle seconds of each file scored")
    results = sub.add_parser("results", help="Tables 5 and 6 for both pipelines (results.md)", description=(
        "Generate one clip per held-out prompt with each pipeline, and with untrained U-Nets, at 16 kHz; "
        "write FAD (MFCC, MuLan) and MuLan similarity tables beside the ground-truth and shuffled baselines. "
        "sample.py's --STAGE-FIELD flags set the sampling (default: each stage's preset)."))
    add_fields(results, ResultsConfig)
    sample.add_knob_flags(results)
    add_fields(sub.add_parser("ablations", help="CFG scale, step schedule and step count sweeps (ablations.md, PNGs)",
                              description=("Vary one inference knob of one stage at a time (CFG w in 1, 2, 5, 10, 15; "
                                           "back-heavy, uniform, front-heavy schedules; steps x0.25 to x2) and plot FAD "
                                           "and MuLan similarity, as Figures 2 and 3.")), AblationConfig)
    return parser


def run_fad(args):
    if not 0 < args.seconds < float("inf"):
        raise UsageError("--seconds must be a finite number > 0")
    if args.embedder == "mulan":
        embed = load_embedders(args.mulan)["MuLan"]
    else:
        embed = MfccEmbedder()
    a, b = (folder_embeddings(audio_files(d), embed, args.seconds) for d in (args.folder_a, args.folder_b))
    value = fad(a, b)
    print(f"FAD_{embed.name} = {value:.4f}  ({args.folder_a}: {len(a)} embeddings, {args.folder_b}: {len(b)})")
    return value


def run_analyze(args):
    for path in args.files:
        problem = not_a_file(path)
        if problem:
            raise UsageError(f"{path}: {problem}")
        try:
            m = audio_measures.analyze(path)
        except Exception as e:  # an unreadable file is the user's input, not a bug
            raise UsageError(f"{path}: {str(e).splitlines()[0]}") from None
        print(f"{path}: {m['seconds']:.2f} s @ {m['sample_rate']} Hz  "
              f"onsets {m['onset_rate']:.2f}/s  pitch {m['median_pitch']:.1f} ({m['note']})  "
              f"percussive {m['percussive_ratio']:.3f}")


def main(argv=None):
    """Entry point; a user's mistake exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = {"results": ResultsConfig, "ablations": AblationConfig}.get(args.command)
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(config)} if config else {}
    try:
        if args.command == "analyze":
            return run_analyze(args)
        if args.command == "fad":
            return run_fad(args)
        if args.command == "results":
            return run_results(ResultsConfig(**fields), sample.read_knobs(args, parser))
        return run_ablations(AblationConfig(**fields))
    except (UsageError, OSError) as e:
        parser.exit(2, f"evaluate.py {args.command}: error: {(str(e).splitlines() or [''])[0]}\n")


if __name__ == "__main__":
    main()
