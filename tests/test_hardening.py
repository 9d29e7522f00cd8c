"""Bad input on every command line: a one-line refusal (exit status 2) before any work starts, never a
traceback, a silent NaN or a partial output file.

CASES is one table of command lines, each with the exit status it must give (2 for a refusal, 0
for inputs that are fine and used to crash). The tests run them in-process (fast); run as a
script, this file runs each as a real process against any checkout and prints the table:

    python tests/test_hardening.py [ROOT [NAME]]  # ROOT: a checkout (default: this one); NAME: cases containing it
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import write_tone_manifest  # noqa: E402

FAST = [f"--{s}-steps=1" for s in ("wave-generator", "cascader", "spec-generator", "vocoder", "super-res")]
TRAIN = ["--steps", "2", "--batch-size", "1", "--workers", "0", "--eval-every", "0", "--device", "cpu"]

# (case, the item, command and arguments ({name} = a fixture path), expected exit status,
#  a path that must not exist afterwards or None)
CASES = [
    ("w nan", "1", ["sample.py", "slow flute", "--seconds", "0.5", "--wave-generator-w", "nan", "--out", "{tmp}/o1.wav"], 2, "{tmp}/o1.wav"),
    ("NaN EMA checkpoint", "1", ["sample.py", "slow flute", "--seconds", "0.1", "--ckpt-dir", "{nan_ckpt}", "--pipeline", "wave", "--out", "{tmp}/o2.wav", *FAST], 2, "{tmp}/o2.wav"),
    ("train --ema-decay nan", "1", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r1", "--ema-decay", "nan", *TRAIN], 2, "{tmp}/r1/super-res.pt"),
    ("resume another stage", "2", ["train.py", "--stage", "cascader", "--data", "{manifest}", "--out", "{swap_run}", "--resume", *TRAIN], 2, None),
    ("sample swapped files", "2", ["sample.py", "slow flute", "--seconds", "0.1", "--ckpt-dir", "{swapped}", "--pipeline", "wave", "--out", "{tmp}/o3.wav", *FAST], 2, "{tmp}/o3.wav"),
    ("--seconds 1.001 wave", "3", ["sample.py", "slow flute", "--seconds", "1.001", "--pipeline", "wave", "--out", "{tmp}/o4.wav", *FAST], 0, None),
    ("--seconds 1.001 spec", "3", ["sample.py", "slow flute", "--seconds", "1.001", "--pipeline", "spec", "--out", "{tmp}/o5.wav", *FAST], 0, None),
    ("--out a folder", "4", ["sample.py", "x", "--out", "{tmp}", *FAST], 2, None),
    ("--out x.mp3", "4", ["sample.py", "x", "--out", "{tmp}/x.mp3", *FAST], 2, "{tmp}/x.mp3"),
    ("--out unwritable folder", "4", ["sample.py", "x", "--out", "{file}/x.wav", *FAST], 2, None),
    ("--cache-dir unwritable", "6", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r2", "--cache-dir", "{file}/c", *TRAIN], 2, "{tmp}/r2/super-res.pt"),
    ("train bad manifest line", "7", ["train.py", "--stage", "super-res", "--data", "{bad_manifest}", "--out", "{tmp}/r3", *TRAIN], 2, "{tmp}/r3/super-res.pt"),
    ("--ckpt-every 0", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r4", "--ckpt-every", "0", *TRAIN], 2, "{tmp}/r4/super-res.pt"),
    ("--log-every 0", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r5", "--log-every", "0", *TRAIN], 2, "{tmp}/r5/super-res.pt"),
    ("--lr nan", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r6", "--lr", "nan", *TRAIN], 2, "{tmp}/r6/super-res.pt"),
    ("--workers -1", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r7", *TRAIN, "--workers", "-1"], 2, "{tmp}/r7/super-res.pt"),
    ("train --device cuda (no GPU)", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r8", *TRAIN, "--device", "cuda"], 2, "{tmp}/r8/super-res.pt"),
    ("sample --device cuda (no GPU)", "7", ["sample.py", "x", "--device", "cuda", "--out", "{tmp}/o6.wav"], 2, "{tmp}/o6.wav"),
    ("non-UTF-8 prompt", "7", ["sample.py", "slow \udcff piano", "--out", "{tmp}/o7.wav"], 2, "{tmp}/o7.wav"),
    ("non-UTF-8 prompts file", "7", ["sample.py", "--prompts", "{latin1_prompts}", "--out-dir", "{tmp}/od1"], 2, "{tmp}/od1/000.wav"),
    ("--seconds nan", "7", ["sample.py", "x", "--seconds", "nan", "--out", "{tmp}/o8.wav"], 2, "{tmp}/o8.wav"),
    ("--seconds 0.0001", "7", ["sample.py", "x", "--seconds", "0.0001", "--out", "{tmp}/o9.wav"], 2, "{tmp}/o9.wav"),
    ("seed above 2^64", "7", ["sample.py", "x", "--seed", str(2 ** 64 + 1), "--out", "{tmp}/o10.wav"], 2, "{tmp}/o10.wav"),
    ("sample --device tpu", "7", ["sample.py", "x", "--device", "tpu", "--out", "{tmp}/o11.wav"], 2, "{tmp}/o11.wav"),
    ("train --device tpu", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r9", *TRAIN, "--device", "tpu"], 2, "{tmp}/r9/super-res.pt"),
    ("sample 0-byte .pt", "7", ["sample.py", "x", "--ckpt-dir", "{empty_ckpt}", "--pipeline", "wave", "--out", "{tmp}/o12.wav", *FAST], 2, "{tmp}/o12.wav"),
    ("train --resume 0-byte .pt", "7", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{empty_run}", "--resume", *TRAIN], 2, None),
    ("data.py check --clip-seconds inf", "7", ["data.py", "check", "{manifest}", "--clip-seconds", "inf"], 2, None),
    ("evaluate.py fad --seconds nan", "7", ["evaluate.py", "fad", "{tmp}/corpus/audio", "{tmp}/corpus/audio", "--seconds", "nan"], 2, None),
    ("vocoder: audio shorter than a hop", "7", ["train.py", "--stage", "vocoder", "--data", "{short_manifest}", "--out", "{tmp}/r10", *TRAIN], 0, None),
    ("pseudolabel label: short audio", "7", ["pseudolabel.py", "label", "--manifest", "{short_manifest}", "--out", "{tmp}/labelled.jsonl", "--model", "{ckpt}/mulan.pt", "--vocab", "{manifest}", "--k", "2", "--long", "1", "--short", "1", "--cache-dir", "{tmp}/plc"], 0, None),
    ("train --t5 missing folder", "-", ["train.py", "--stage", "cascader", "--data", "{manifest}", "--out", "{tmp}/r11", "--t5", "{tmp}/no-t5", *TRAIN], 2, "{tmp}/r11/cascader.pt"),
    ("--seconds=0", "8", ["sample.py", "x", "--seconds=0", "--out", "{tmp}/o13.wav"], 2, "{tmp}/o13.wav"),
    ("--out-dir with one prompt", "8", ["sample.py", "x", "--out-dir", "{tmp}/od2", *FAST], 2, "{tmp}/od2/000.wav"),
    ("data.py check: int captions", "8", ["data.py", "check", "{int_captions}"], 2, None),
    ("data.py check: string tags", "8", ["data.py", "check", "{string_tags}"], 2, None),
    ("train --loss-weighting snr", "-", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r12", "--loss-weighting", "snr", *TRAIN], 2, "{tmp}/r12/super-res.pt"),
    ("train --t5 for a stage without text", "-", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{tmp}/r14", "--t5", "{tmp}/no-t5", *TRAIN], 2, "{tmp}/r14/super-res.pt"),
    ("resume past --steps", "-", ["train.py", "--stage", "super-res", "--data", "{manifest}", "--out", "{swap_run}", "--resume", *TRAIN, "--steps", "1"], 2, None),
    ("train --stage all --loss-weighting unit", "-", ["train.py", "--stage", "all", "--out", "{tmp}/r13", "--loss-weighting", "unit"], 2, "{tmp}/r13"),
    ("--cascader-sampler euler", "-", ["sample.py", "x", "--cascader-sampler", "euler", "--out", "{tmp}/o14.wav"], 2, "{tmp}/o14.wav"),
]


def make_fixtures(tmp, root=ROOT):
    """The files CASES names, built with torch, numpy and soundfile alone (and one short train.py
    run), so that the same table measures any checkout."""
    tmp = str(tmp)
    shipped = os.path.join(root, "checkpoints", "toy")
    paths = {"tmp": tmp, "ckpt": shipped, "file": os.path.join(tmp, "file.txt")}
    open(paths["file"], "w").close()
    for name in ("nan_ckpt", "swapped", "empty_ckpt"):
        paths[name] = os.path.join(tmp, name)
        shutil.copytree(shipped, paths[name])
    ckpt = torch.load(os.path.join(shipped, "cascader.pt"), weights_only=True)
    ckpt["ema"] = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    torch.save(ckpt, os.path.join(paths["nan_ckpt"], "cascader.pt"))
    shutil.copy(os.path.join(shipped, "vocoder.pt"), os.path.join(paths["swapped"], "cascader.pt"))
    open(os.path.join(paths["empty_ckpt"], "cascader.pt"), "w").close()
    paths["manifest"] = write_tone_manifest(os.path.join(tmp, "corpus"), n=2, seconds=1.0)
    paths["short_manifest"] = _short_manifest(os.path.join(tmp, "short"))
    lines = {"bad_manifest": ['{"audio": "audio/000.wav"}', "{oops"],
             "int_captions": ['{"audio": "audio/000.wav", "captions": [1, 2]}'],
             "string_tags": ['{"audio": "audio/000.wav", "tags": "folk"}']}
    for name, text in lines.items():
        paths[name] = os.path.join(tmp, "corpus", f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.write("\n".join(text) + "\n")
    paths["latin1_prompts"] = os.path.join(tmp, "prompts.txt")
    with open(paths["latin1_prompts"], "wb") as f:
        f.write("slow pi\u00e1no\n".encode("latin-1"))
    paths["swap_run"] = _swapped_run(os.path.join(tmp, "swap_run"), paths["manifest"], root)
    paths["empty_run"] = os.path.join(tmp, "empty_run")
    os.makedirs(paths["empty_run"])
    open(os.path.join(paths["empty_run"], "super-res.pt"), "w").close()
    return paths


def _short_manifest(folder):
    """One usable clip and one of 50 samples (3 ms), shorter than a spectrogram hop."""
    os.makedirs(folder, exist_ok=True)
    t = np.arange(16000) / 16000
    sf.write(os.path.join(folder, "ok.wav"), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    sf.write(os.path.join(folder, "short.wav"), (0.3 * np.sin(np.arange(50) / 3)).astype(np.float32), 16000)
    path = os.path.join(folder, "manifest.jsonl")
    with open(path, "w") as f:
        for name in ("ok", "short"):
            f.write(json.dumps({"audio": f"{name}.wav", "captions": ["a slow piano tune"]}) + "\n")
    return path


def _swapped_run(folder, manifest, root):
    """A run folder whose cascader.pt is really a super-res training checkpoint (at step 2, as its super-res.pt)."""
    subprocess.run([sys.executable, "train.py", "--stage", "super-res", "--data", manifest, "--out", folder,
                    "--steps", "2", "--batch-size", "1", "--workers", "0", "--eval-every", "0"],
                   cwd=root, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    shutil.copy(os.path.join(folder, "super-res.pt"), os.path.join(folder, "cascader.pt"))
    return folder


def fill(argv, paths):
    return [a.format(**paths) for a in argv]


# ------------------------------------------------------------------------------------------------
# The table, in-process

@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("hardening"))


def run_main(argv, capsys):
    """(exit status, stderr lines) of `python SCRIPT ARGS...` run in this process."""
    import importlib
    module = importlib.import_module(argv[0][:-3])
    try:
        module.main(argv[1:])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_command_lines_are_refused_in_one_line(case, paths, capsys, monkeypatch):
    name, _, argv, expected, must_not_exist = case
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)      # no GPU, even on a machine with one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_main(fill(argv, paths), capsys)
    assert code == expected, (name, err[-5:])
    if expected == 2:
        assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0], (name, err)
    if must_not_exist:
        assert not os.path.exists(must_not_exist.format(**paths)), name


def test_the_refusals_name_what_is_wrong(paths, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    expect = {"resume another stage": "holds the super-res stage, not the cascader",
              "sample swapped files": "holds the vocoder stage, not the cascader",
              "NaN EMA checkpoint": "cascader EMA weights) holds NaN", "w nan": "--wave-generator-w must be a finite",
              "--out-dir with one prompt": "--out-dir goes with --prompts",
              "data.py check: string tags": '"tags" must be a list of strings',
              "resume past --steps": "is at step 2, past --steps 1", "train --t5 for a stage without text": "reads no text"}
    for name, _, argv, *_ in CASES:
        if name in expect:
            _, err = run_main(fill(argv, paths), capsys)
            assert expect[name] in err[0], (name, err)


def test_a_real_process_refuses_undecodable_argv_bytes(tmp_path):
    r = subprocess.run([sys.executable.encode(), b"sample.py", b"slow \xff piano", b"--out", str(tmp_path / "a.wav").encode()],
                       cwd=ROOT, capture_output=True)
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 1 and b"not UTF-8" in r.stderr, r.stderr
    assert not (tmp_path / "a.wav").exists()


def test_short_audio_is_skipped_with_a_note(paths, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    import data
    clips, skipped = data.load_clips(data.read_manifest(paths["short_manifest"]), 16000, 4.0)
    assert len(clips) == 1 and len(skipped) == 1 and "too short" in skipped[0][1]


# ------------------------------------------------------------------------------------------------
# Stage lengths, atomic writes, stale temporaries, NaN guards

def test_stage_lengths_cover_the_next_stage_for_any_length():
    """Every up-sampled stage output is at least the next stage's length (~40% of three-decimal
    lengths were one sample short when each stage rounded on its own)."""
    import cascade
    rng = np.random.default_rng(0)
    for pipeline, names in cascade.PIPELINES.items():
        first = cascade.stage_spec(names[0])
        for seconds in np.concatenate([rng.uniform(0.01, 30, 2000), np.arange(1, 2000) / 1000]):
            n1, n2, n3 = cascade.stage_lengths(first, seconds)
            up1 = n1 * 160 if pipeline == "spec" else n1 * 16000 // first.sample_rate
            assert n3 == round(seconds * 24000) and up1 >= n2 and n2 * 24000 // 16000 >= n3, (pipeline, seconds)
            assert up1 - n2 < (160 if pipeline == "spec" else 5) and n2 * 3 // 2 - n3 <= 1


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import sample
    path = str(tmp_path / "a.wav")
    sample.write_wave(path, np.zeros(2400, np.float32), 24000)
    before = open(path, "rb").read()

    def full_disk(file, *args, **kw):
        with open(file, "wb") as f:
            f.write(b"RIFF")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sample.sf, "write", full_disk)
    with pytest.raises(OSError):
        sample.write_wave(path, np.ones(2400, np.float32) * 0.5, 24000)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["a.wav"]


def test_write_wave_refuses_nan():
    import sample
    with pytest.raises(FloatingPointError):
        sample.write_wave("/nonexistent/never.wav", np.array([0.0, np.nan], np.float32), 24000)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import checks
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / f"cascader.pt.tmp{dead.stdout.strip()}", tmp_path / f"cascader.pt.tmp{os.getppid()}"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    checks.remove_stale_temporaries(str(tmp_path / "cascader.pt"))
    assert not stale.exists() and live.exists()


def test_train_removes_stale_temporaries_and_stops_on_nan_weights(tmp_path, paths, monkeypatch, capsys):
    import train
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.makedirs(tmp_path / "run")
    stale = tmp_path / "run" / f"super-res.pt.tmp{dead.stdout.strip()}"
    stale.write_bytes(b"partial")
    cfg = train.TrainConfig(stage="super-res", data=paths["manifest"], out=str(tmp_path / "run"), steps=2,
                            batch_size=1, workers=0, eval_every=0, device="cpu")
    real = train.ema_update

    def poisoned(ema, model, decay, step):
        real(ema, model, decay, step)
        next(ema.parameters()).data.fill_(math.nan)
    monkeypatch.setattr(train, "ema_update", poisoned)
    with pytest.raises(SystemExit, match="super-res EMA hold NaN or infinity at step 2.*no checkpoint was written yet"):
        train.train_stage(cfg, "super-res")
    assert not stale.exists() and not (tmp_path / "run" / "super-res.pt").exists()


def test_a_stage_that_makes_nan_is_named(monkeypatch):
    import cascade
    import diffusion
    stage = cascade.StageModel(os.path.join(ROOT, "checkpoints", "toy", "super-res.pt"))
    monkeypatch.setattr(diffusion, "run_sampler", lambda name, eps, x_T, *a, **k: x_T * math.nan)
    with pytest.raises(FloatingPointError, match="super-res stage produced NaN"):
        cascade.run_stage(stage, cascade.Sampling(steps=1), (1, 1, 240), torch.Generator(), cond=torch.zeros(1, 1, 240))


def test_overlapping_safetensors_offsets_are_refused(tmp_path):
    import struct

    import text
    path = str(tmp_path / "m.safetensors")
    text.write_safetensors(path, {"a": torch.zeros(4), "b": torch.ones(4)})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["b"]["data_offsets"] = [8, 24]                  # b starts inside a
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    with pytest.raises(text.T5LoadError, match="overlap"):
        text.read_safetensors(path)


def test_analyze_reads_long_files_in_blocks(tmp_path, monkeypatch):
    """A file longer than a block is measured block by block (bounded memory) and agrees with the
    whole-file measurement on a steady tone with regular clicks."""
    import audio_measures as evaluate
    rate = 8000
    t = np.arange(12 * rate) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    wave[::rate // 2] += 0.8                                    # two clicks per second
    sf.write(tmp_path / "x.wav", wave.astype(np.float32), rate)
    whole = evaluate.analyze(str(tmp_path / "x.wav"))
    reads = []
    real = evaluate.onset_rate
    monkeypatch.setattr(evaluate, "onset_rate", lambda w, r: reads.append(len(w)) or real(w, r))
    blocks = evaluate.analyze(str(tmp_path / "x.wav"), block_seconds=3.0)
    assert reads == [3 * rate] * 4 and blocks["seconds"] == whole["seconds"] == 12.0
    assert abs(blocks["median_pitch"] - whole["median_pitch"]) < 0.1
    assert abs(blocks["onset_rate"] - whole["onset_rate"]) < 0.5
    assert abs(blocks["percussive_ratio"] - whole["percussive_ratio"]) < 0.05


@pytest.mark.parametrize("extra", [1, 79, 4000])
def test_analyze_counts_a_short_last_block_without_measuring_it(tmp_path, extra):
    """A file just past a whole number of blocks leaves a tail too short to measure (here 1 and 79
    samples, under one 10 ms hop, and half a second): it counts in the duration and is not an error."""
    import audio_measures
    rate = 8000
    wave = 0.3 * np.sin(2 * np.pi * 220 * np.arange(6 * rate + extra) / rate)
    sf.write(tmp_path / "x.wav", wave.astype(np.float32), rate)
    r = audio_measures.analyze(str(tmp_path / "x.wav"), block_seconds=3.0)
    assert r["seconds"] == (6 * rate + extra) / rate and r["note"] == "A3"


def test_bench_loaders_do_not_run_pickled_code(tmp_path):
    """A crafted --rescore / --data file (a pickle whose loading runs a command) is refused."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import adherence
    marker = tmp_path / "ran"
    torch.save({"wave": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not audio stored by --save-audio"):
        adherence.load_audio(str(tmp_path / "evil.pt"))
    with pytest.raises(Exception):
        torch.load(tmp_path / "evil.pt", map_location="cpu", weights_only=True)    # toy_scaling's call
    assert not marker.exists()
    audio = {"wave": {"seconds": 4.0, "final": [np.full(8, k, np.float32) for k in range(3)],
                      "stages": {"x": [np.zeros(4, np.float32)]}}}
    adherence.save_audio(str(tmp_path / "ok.pt"), audio)
    back = adherence.load_audio(str(tmp_path / "ok.pt"))
    assert [float(w[0]) for w in back["wave"]["final"]] == [0.0, 1.0, 2.0]


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------
# Fuzz: random lengths, seeds and knobs through sample.py's checks (and a few tiny generations)

def _draw(rng, pool, low, high):
    return str(rng.choice(pool)) if rng.random() < 0.5 else f"{rng.uniform(low, high):.4g}"


KNOBS = [(f"--{stage}-{name}", low, high) for stage in ("wave-generator", "cascader", "spec-generator", "vocoder",
                                                        "super-res")
         for name, (low, high) in {"w": (-1, 120), "gamma": (-0.5, 1.5), "clip": (-0.1, 1.1)}.items()]
KNOBS += [("--vocoder-aug", -0.1, 1.1), ("--vocoder-project", -0.1, 1.1), ("--cascader-aug", -0.1, 1.1)]


def _fuzz_argv(rng, out, tiny=False):
    """A random sample.py command line: length, seed, pipeline, steps and up to three other knobs."""
    seconds = f"{rng.uniform(0.01, 0.12):.3f}" if tiny else _draw(
        rng, ["nan", "inf", "-1", "0", "0.0001", "0.01", "1.001", "600", "600.1", "1e9"], 1e-3, 40)
    seed = int(rng.choice([0, 7, -1, 2 ** 63 - 2, 2 ** 63, 2 ** 64 + 1])) if rng.random() < 0.3 else int(rng.integers(0, 2 ** 62))
    argv = ["slow flute", "--out", out, "--seconds", seconds, "--pipeline", str(rng.choice(["wave", "spec"])),
            "--seed", str(seed)]
    for stage in ("wave-generator", "cascader", "spec-generator", "vocoder", "super-res"):
        if tiny or rng.random() < 0.2:
            steps = int(rng.integers(1, 3)) if tiny else int(rng.choice([-1, 0, 1, 2, 50]))
            argv += [f"--{stage}-steps", str(steps)]
    for k in rng.choice(len(KNOBS), size=int(rng.integers(0, 4)), replace=False):
        flag, low, high = KNOBS[k]
        argv += [flag, _draw(rng, ["nan", "inf", "-inf", "0", "1", "0.5"], low, high)]
    return argv


def test_fuzz_sample_arguments(tmp_path, capsys, monkeypatch):
    """200 random command lines: each is parsed (exit 2 with one line) or its stage lengths cover
    one another; then 4 tiny generations end in exit 0 with a valid WAV or exit 2 with one line."""
    import cascade
    import sample
    monkeypatch.chdir(ROOT)
    rng = np.random.default_rng(1234)
    accepted = 0
    for _ in range(200):
        argv = _fuzz_argv(rng, str(tmp_path / "f.wav"))
        try:
            args, _ = sample.parse_args(argv)
        except SystemExit as e:
            err = capsys.readouterr().err.strip().splitlines()
            assert e.code == 2 and len(err) == 1 and ": error: " in err[0], (argv, err)
            continue
        accepted += 1
        first = cascade.stage_spec(cascade.PIPELINES[args.pipeline][0])
        n1, n2, n3 = cascade.stage_lengths(first, args.seconds or 4.0)
        assert n3 == round((args.seconds or 4.0) * 24000) and n3 >= 240 and n2 * 3 // 2 >= n3
    assert 10 < accepted < 190                            # the draws hit both sides of the checks
    for k in range(4):
        out = str(tmp_path / f"g{k}.wav")
        argv = _fuzz_argv(rng, out, tiny=True)
        code, err = run_main(["sample.py", *argv], capsys)
        if code == 0:
            wave, rate = sf.read(out)
            seconds = float(argv[argv.index("--seconds") + 1])
            assert rate == 24000 and len(wave) == round(seconds * 24000) and np.isfinite(wave).all(), argv
        else:
            assert code == 2 and len(err) == 1 and not os.path.exists(out), (argv, err)


# ------------------------------------------------------------------------------------------------
# As a script: each case as a real process, against any checkout

def measure(root, only=""):
    """Run the cases whose name contains `only` as real processes in `root`; print the table."""
    import tempfile
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_fixtures(tmp, root)
        print("| case | issue item | exit status | expected | stderr lines | traceback | output left |")
        print("|---|---|---|---|---|---|---|")
        for name, item, argv, expected, must_not_exist in CASES:
            if only not in name:
                continue
            args = [a.encode("utf-8", "surrogateescape") for a in fill(argv, paths)]
            r = subprocess.run([sys.executable.encode(), *args], cwd=root, capture_output=True, env=env, timeout=900)
            err = r.stderr.decode("utf-8", "replace")
            left = bool(must_not_exist) and os.path.exists(must_not_exist.format(**paths))
            lines = len([ln for ln in err.splitlines() if ln.strip() and "\r" not in ln])
            print(f"| {name} | {item} | {r.returncode} | {expected} | {lines} | {'Traceback' in err} | {left} |",
                  flush=True)


if __name__ == "__main__":
    measure(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ROOT), *sys.argv[2:3])


def test_unreadable_checkpoints_are_named_in_a_short_line(tmp_path):
    """torch.load's paragraphs become one short reason: a file that is not a checkpoint, and one that holds
    code to run, which is never loaded."""
    import checks
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    torch.save({"a": os.system}, tmp_path / "code.pt")
    reasons = {}
    for name in ("junk.pt", "code.pt"):
        with pytest.raises(Exception) as e:
            torch.load(tmp_path / name, weights_only=True)
        reasons[name] = checks.load_problem(e.value)
    assert reasons["junk.pt"].startswith("not a torch checkpoint file") and "code" in reasons["code.pt"]
    assert all(len(r) < 100 for r in reasons.values())
