"""evaluate.py and its parts (metrics.py, eval_set.py, reports.py, plots.py): FAD against a direct scipy
computation, the embedders, the Table 6 layout, the 16 kHz generation path against cascade_generate,
the results/ablations commands end to end on tiny random models, the spectrogram picture, and the
command line's errors."""
import dataclasses
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
import torch

import cascade
import data
import eval_set
import evaluate as ev
import metrics
import plots
import pseudolabel as pl
import reports
import text
import unet1d
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


# ----------------------------------------------------------------------------------------------
# FAD

def _direct_fad(a, b):
    """The reference FAD computation (Kilgour et al.'s code): scipy.linalg.sqrtm of the product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))


def test_fad_equals_the_direct_sqrtm_computation_on_fixed_data():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    b = 0.7 * rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + rng.normal(size=8)
    assert metrics.fad(a, b) == pytest.approx(_direct_fad(a, b), rel=1e-9)
    assert metrics.fad(a, b) == pytest.approx(metrics.fad(b, a), rel=1e-9)          # symmetric
    assert metrics.fad(a, a) < 1e-9 and metrics.fad(a, b) > 1.0
    # [N x K x E] frame embeddings are pooled into one set
    assert metrics.fad(a.reshape(100, 3, 8), b) == pytest.approx(metrics.fad(a, b), rel=1e-12)


def test_frechet_distance_closed_form_for_diagonal_gaussians_and_singular_sets():
    mu1, mu2 = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 3.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1 + 4 + 9 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(1)                                       # N < E: singular covariances
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5
    assert np.isfinite(metrics.fad(a, b)) and metrics.fad(a, b) > 0 and metrics.fad(a, a) < 1e-9
    with pytest.raises(ValueError):
        metrics.fad(a[:1], b)


# ----------------------------------------------------------------------------------------------
# Embedders

def _tones(n, seed, seconds=2.0):
    """Harmonic tones at random pitches (200-400 Hz) with a slow swell."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        f0 = rng.uniform(200, 400)
        out.append(sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(np.pi * t / seconds)))
    return np.array(out, dtype=np.float32)


def _clicks(n, seed, seconds=2.0):
    """Decaying noise bursts at a random rate (4-8 per second): drum-like."""
    rng = np.random.default_rng(seed)
    T = int(seconds * SR)
    out = np.zeros((n, T), dtype=np.float32)
    for i in range(n):
        for start in np.arange(0, T - 2000, int(SR / rng.uniform(4, 8))):
            out[i, start:start + 2000] += 0.5 * rng.normal(size=2000) * np.exp(-np.arange(2000) / 300)
    return out


def test_mfcc_embedder_is_deterministic_and_separates_tones_from_clicks():
    embed = metrics.MfccEmbedder()
    tones_a, tones_b, clicks = (metrics.log_mels(x, SR) for x in (_tones(12, 0), _tones(12, 1), _clicks(12, 2)))
    e = embed(tones_a)
    assert e.shape == (12, 2, 39) and np.array_equal(e, embed(tones_a))    # two 1 s windows of 39
    assert np.array_equal(metrics.log_mels(_tones(3, 0), SR), metrics.log_mels(_tones(3, 0), SR))
    same, different = metrics.fad(e, embed(tones_b)), metrics.fad(e, embed(clicks))
    assert different > 10 * same, (same, different)


TINY_MULAN = pl.MulanConfig(embed_dim=16, window_seconds=0.5, audio_channels=(8, 16), token_len=16,
                            t5=dataclasses.asdict(text.T5Config(vocab_size=512, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                                num_heads=2, feed_forward_proj="gated-gelu")))


@pytest.fixture(scope="module")
def tiny_mulan():
    spm_bytes = pl.train_sentencepiece(pl.tokenizer_sentences([], helpers.CAPTIONS), 200)
    config = dataclasses.replace(TINY_MULAN, t5=dict(TINY_MULAN.t5, vocab_size=text.Tokenizer(spm_bytes).vocab_size))
    torch.manual_seed(0)
    return pl.Mulan(config, spm_bytes).eval().requires_grad_(False)


def test_mulan_embedder_equals_pseudolabel_embed_audio_and_embed_text(tiny_mulan):
    waves = _tones(3, 4, seconds=0.5)                                    # one window each
    ours = metrics.MulanEmbedder(tiny_mulan)(metrics.log_mels(waves, SR))
    assert ours.shape == (3, 1, 16)
    np.testing.assert_allclose(ours[:, 0], pl.embed_audio(tiny_mulan, waves, SR).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(metrics.MulanEmbedder(tiny_mulan)(metrics.log_mels(_tones(2, 5, 1.7), SR)), axis=-1), 1.0,
                               rtol=1e-5)                                # three windows averaged: a unit vector
    prompts = ["a slow piano tune in a major key", "fast drums and bass"]
    np.testing.assert_allclose(metrics.MulanEmbedder(tiny_mulan).text(prompts), pl.embed_text(tiny_mulan, prompts).numpy())


# ----------------------------------------------------------------------------------------------
# Table 6's layout, the middle crop

def test_similarity_rows_layout_with_tiny_inputs():
    gt = np.eye(4)                                                       # four orthogonal unit clips
    rows = metrics.similarity_rows(gt, gt, gt[:, None], {"copy": gt, "opposite": -gt, "blend": np.full((4, 4), 0.5)},
                              np.random.default_rng(0))
    assert [r[0] for r in rows] == ["Ground truth audio", "Randomly shuffled audio", "copy", "opposite", "blend"]
    assert rows[0][1:] == (1.0, 1.0) and rows[1][1:] == (0.0, 0.0)      # shuffled: always another clip
    assert rows[2][1:] == (1.0, 1.0) and rows[3][1:] == (-1.0, -1.0) and rows[4][1:] == (0.5, 0.5)
    table = reports.markdown_table(["Model", "audio <-> gt-text", "audio <-> gt-audio"], [r for r in rows])
    lines = table.splitlines()
    assert lines[0] == "| Model | audio <-> gt-text | audio <-> gt-audio |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| Ground truth audio | 1.000 | 1.000 |" and len(lines) == 7
    p = metrics.derangement(5, np.random.default_rng(3))
    assert sorted(p) == list(range(5)) and all(p != np.arange(5))


def test_middle_takes_the_centre_and_keeps_short_clips_whole():
    x = np.arange(30 * 10)                                               # 30 s at 10 per second
    assert np.array_equal(eval_set.middle(x, 10, 10.0), np.arange(100, 200))
    assert np.array_equal(eval_set.middle(x[:40], 10, 10.0), x[:40])


# ----------------------------------------------------------------------------------------------
# A tiny corpus, tiny random checkpoints and a tiny MuLan: the commands end to end

COMBOS = [{"tempo": "slow", "instrument": "piano", "mode": "major", "drums": False},
          {"tempo": "fast", "instrument": "organ", "mode": "minor", "drums": True}]


def write_corpus(folder):
    """Two attribute combinations, four 1 s clips each, two held-out phrasings each."""
    os.makedirs(os.path.join(folder, "audio"))
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        for c, attributes in enumerate(COMBOS):
            waves = _tones(4, c, 1.0) if c == 0 else _clicks(4, c, 1.0)
            for i, wave in enumerate(waves):
                path = f"audio/{c}_{i}.wav"
                sf.write(os.path.join(folder, path), wave, SR)
                f.write(json.dumps({"audio": path, "captions": [f"clip {c} {i}"], "attributes": attributes}) + "\n")
    with open(os.path.join(folder, eval_set.HELDOUT_CAPTIONS), "w") as f:
        for c, attributes in enumerate(COMBOS):
            for phrasing in ("a slow piano tune", "fast drums and bass") if c == 0 else ("an organ chorale, solo", "lo-fi guitar ballad"):
                f.write(json.dumps({"caption": phrasing, "attributes": attributes}) + "\n")
    return folder


def write_checkpoints(folder, mulan):
    """Every stage's toy U-Net, narrowed to width 8 with one block per depth, with random weights
    (text width 32); the tiny T5; and mulan.pt."""
    t5 = helpers.write_tiny_t5(os.path.join(folder, "t5"))
    for stage in cascade.STAGES:
        config = cascade.unet_config(stage, "toy", text_dim=32)
        config = dataclasses.replace(config, base_dim=8, blocks=(1,) * len(config.strides))
        torch.manual_seed(len(stage))
        model = unet1d.UNet1D(config)
        torch.save({"format_version": 1, "stage": stage, "scale": "toy", "step": 1, "config": config.to_dict(),
                    "model": None, "optimizer": None, "t5": os.path.relpath(t5, folder), "ema": model.state_dict()},
                   os.path.join(folder, f"{stage}.pt"))
    pl.save_mulan(os.path.join(folder, "mulan.pt"), mulan)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_mulan):
    root = tmp_path_factory.mktemp("eval")
    return write_corpus(str(root / "corpus")), write_checkpoints(str(root / "ckpt"), tiny_mulan)


def test_eval_set_pairs_each_prompt_with_distinct_fitting_clips(setup):
    corpus, _ = setup
    es = eval_set.eval_set(corpus, 4, refs=1, seed=0)
    key = lambda a: json.dumps(a, sort_keys=True)
    assert sorted(map(key, es.attributes)) == sorted(map(key, COMBOS * 2))
    assert set(map(key, es.attributes[:2])) == set(map(key, COMBOS))    # every combination first
    entries = {e["audio"]: e["attributes"] for e in data.read_manifest(os.path.join(corpus, "manifest.jsonl"))}
    clips = [c for cs in es.clips for c in cs]
    assert len(set(clips)) == len(clips) == 8
    assert all(entries[c] == a for cs, a in zip(es.clips, es.attributes) for c in cs)
    with pytest.raises(eval_set.UsageError):
        eval_set.eval_set(corpus, 4, refs=2, seed=0)                           # 4 clips per combination: 2 x 3 > 4
    with pytest.raises(eval_set.UsageError):
        eval_set.eval_set(corpus, 5, refs=1, seed=0)                           # only 4 held-out phrasings


@pytest.fixture()
def one_thread():
    """One torch thread (as the commands use): tiny convolutions on two busy cores are far slower with two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_16khz_path_equals_cascade_generate_intermediate(setup, pipeline, one_thread):
    _, ckpt = setup
    models, text_encoder = eval_set.load_pipeline(ckpt, pipeline)
    stages = dict(models, **{"super-res": cascade.StageModel(os.path.join(ckpt, "super-res.pt"))})
    knobs = eval_set.default_knobs(steps=2)
    prompts = ["a slow piano tune", "fast drums and bass", "lo-fi guitar ballad"]
    keep = {}
    cascade.cascade_generate(stages, text_encoder, prompts[:2], pipeline, 0.25, 5, knobs, keep=keep)
    first = eval_set.generate_first(models, text_encoder, prompts, pipeline, 0.25, knobs, seed=5, batch=2)
    second = eval_set.generate_second(models, text_encoder, prompts, pipeline, 0.25, knobs, first, batch=2)
    name1, name2 = cascade.PIPELINES[pipeline][:2]
    assert torch.equal(first.x[:2], keep[name1]) and torch.equal(second.x[:2], keep[name2])
    assert second.x.shape == (3, 1, 4000)
    # the untrained baseline: same configs, other weights
    untrained, _ = eval_set.load_pipeline(ckpt, pipeline, untrained_seed=0)
    a, b = (dict(m[name2].model.named_parameters()) for m in (models, untrained))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_results_and_ablations_commands_end_to_end(setup, tmp_path, one_thread):
    corpus, ckpt = setup
    common = ["--ckpt-dir", ckpt, "--corpus", corpus, "--n", "2", "--refs", "2", "--steps", "2", "--seconds", "0.5"]
    rows = ev.main(["results", *common, "--out", str(tmp_path / "r")])
    assert list(rows) == ["Ground truth audio"] + [s[0] for s in reports.SYSTEMS]
    assert all(np.isfinite(v) for r in rows.values() for v in r.values())
    report = (tmp_path / "r" / "results.md").read_text()
    assert "## Table 5" in report and "## Table 6" in report and "| Untrained Spectrogram |" in report
    meta = json.loads((tmp_path / "r" / "results.json").read_text())["meta"]
    assert meta["n"] == 2 and meta["stages"]["vocoder"]["sampling_steps"] == 2
    # sample.py's knob flags set the sampling (the other stages keep --steps); --pipelines picks the systems
    rows = ev.main(["results", *common, "--vocoder-sampler", "ancestral", "--vocoder-steps", "3", "--pipelines", "spec",
                    "--out", str(tmp_path / "k")])
    assert list(rows) == ["Ground truth audio", "Noise2Music Spectrogram", "Untrained Spectrogram"]
    stages = json.loads((tmp_path / "k" / "results.json").read_text())["meta"]["stages"]
    assert (stages["vocoder"]["sampler"], stages["vocoder"]["sampling_steps"]) == ("ancestral", 3)
    assert stages["spec-generator"]["sampling_steps"] == 2
    records = ev.main(["ablations", *common, "--stages", "cascader,vocoder", "--out", str(tmp_path / "a")])
    assert [(r["knob"], r["value"]) for r in records if r["stage"] == "cascader"] == \
        [("w", w) for w in reports.CFG_SCALES] + [("schedule", s) for s in reports.SCHEDULES] + [("steps", s) for s in (1, 1, 2, 4)]
    assert {r["knob"] for r in records if r["stage"] == "vocoder"} == {"schedule", "steps"}   # no text, no CFG
    assert "![" in (tmp_path / "a" / "ablations.md").read_text()
    for name in ("cfg.png", "schedule.png", "steps.png"):
        w, h = _png_size(tmp_path / "a" / name)
        assert w >= 330 and h >= 230


def test_save_spectrogram_draws_the_log_mel_low_channels_at_the_bottom(tmp_path):
    mel = -np.ones((80, 200), dtype=np.float32)
    mel[:10] = 1.0                                                       # a loud low band, silence above
    plots.save_spectrogram(tmp_path / "x.png", mel, "a test")
    image = matplotlib.image.imread(tmp_path / "x.png")[..., :3]         # (H, W, RGB) floats
    H, W, _ = image.shape
    assert W > 200 and H > 150
    column = image[:, W // 3]                                            # a column through the plot area
    colours = {tuple(np.round(c, 2)) for c in column}
    assert len(colours) > 3                                              # frame, band and silence differ
    bright = column.sum(-1)
    plot_rows = np.flatnonzero(np.abs(np.diff(bright)) > 0.3)            # edges: frame and band limits
    top, bottom = plot_rows.min(), plot_rows.max()
    assert bright[bottom - 2] > bright[top + 3]                          # the loud band is drawn at the bottom


# ----------------------------------------------------------------------------------------------
# The command line

def _run(*args):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_fad_command_between_two_folders(tmp_path, capsys):
    for name, waves in (("a", _tones(6, 0)), ("b", _clicks(6, 1)), ("c", _tones(6, 7))):
        os.makedirs(tmp_path / name)
        for i, w in enumerate(waves):
            sf.write(tmp_path / name / f"{i}.wav", w, SR)
    different = ev.main(["fad", str(tmp_path / "a"), str(tmp_path / "b")])
    assert capsys.readouterr().out.startswith("FAD_MFCC = ")
    assert different > 5 * ev.main(["fad", str(tmp_path / "a"), str(tmp_path / "c")])


@pytest.mark.parametrize("args", [[], ["results", "--n", "1"], ["results", "--ckpt-dir", "/nonexistent"],
                                  ["results", "--corpus", "/nonexistent"], ["ablations", "--stages", "super-res"],
                                  ["fad", "/nonexistent", "."], ["analyze", "/nonexistent.wav"],
                                  ["results", "--n", "many"], ["fad", ".", ".", "--seconds", "0"],
                                  ["results", "--pipelines", "wave,mel"]])
def test_bad_usage_exits_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit:
        ev.main(args)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()[-1]) < 300, err


def test_the_command_line_itself_exits_2_without_a_traceback():
    r = _run("results", "--n", "1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "evaluate.py results: error: need --n >= 2, --refs >= 2, --batch >= 1, --threads >= 1, --steps >= 1, 0 < --seconds < inf"]


def test_help_of_each_command(capsys):
    for command in ("analyze", "fad", "results", "ablations"):
        with pytest.raises(SystemExit) as exit:
            ev.main([command, "--help"])
        assert exit.value.code == 0 and "usage: evaluate.py " + command in capsys.readouterr().out


def test_a_broken_corpus_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "manifest.jsonl").write_text("not json\n")
    (tmp_path / eval_set.HELDOUT_CAPTIONS).write_text(json.dumps({"caption": "x", "attributes": {}}) + "\n")
    (tmp_path / "mulan.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as exit:
        ev.main(["results", "--corpus", str(tmp_path), "--mulan", str(tmp_path / "mulan.pt")])
    assert exit.value.code == 2 and "manifest.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_judge_prompt_sets_name_each_attribute_once_and_share_no_prompt():
    """bench/judge.py's prompt sets: every tempo x instrument x drums x mode once per set, each prompt
    naming its own words and none of the other values', and no prompt in two sets."""
    from bench.judge_prompts import INSTRUMENTS, prompt_set

    def words(prompt):
        return set(prompt.lower().replace(",", " ").replace(".", " ").replace("-", " ").replace(":", " ").split())

    sets = {name: prompt_set(name) for name in ("tune", "eval", "check")}
    for name, prompts in sets.items():
        combos = {tuple(sorted(a.items(), key=lambda kv: kv[0])) for _, a in prompts}
        assert len(prompts) == len(combos) == 40, name
        for prompt, a in prompts:
            w = words(prompt)
            assert a["tempo"] in w and ({"slow", "fast"} - {a["tempo"]}).isdisjoint(w), prompt
            assert a["instrument"] in w and (set(INSTRUMENTS) - {a["instrument"]}).isdisjoint(w), prompt
            assert a["mode"] in w and ({"major", "minor"} - {a["mode"]}).isdisjoint(w), prompt
            assert ("drums" in w) == a["drums"] and ("solo" in w) == (not a["drums"]), prompt
    assert len({p for ps in sets.values() for p, _ in ps}) == 120


def test_stored_judge_is_used_only_if_trained_as_asked(tmp_path, monkeypatch):
    """bench/judge.py keeps its trained judge in a file; a file trained with other sizes, seed or code
    (or before judges recorded them) is trained again, never silently reused."""
    import argparse
    from bench import judge as jb

    trained = []
    monkeypatch.setattr(jb, "train_judge", lambda *a, **k: trained.append(a) or {"models": len(trained)})
    monkeypatch.setattr(jb, "fit_judge", lambda judge, log: judge)
    path, quiet = str(tmp_path / "judge.pt"), (lambda msg: None)
    ask = lambda **kw: argparse.Namespace(**{**jb.TRAINING, **kw})
    assert jb.load_judge(path, ask(), quiet)["models"] == 1
    assert jb.load_judge(path, ask(), quiet)["models"] == 1 and len(trained) == 1
    assert jb.load_judge(path, ask(train_clips=60), quiet)["models"] == 2
    assert jb.load_judge(path, ask(train_clips=60, judge_seed=1), quiet)["models"] == 3
    stale = torch.load(path, weights_only=False)
    stale["key"]["code"] = "0" * 64
    torch.save(stale, path)
    assert jb.load_judge(path, ask(train_clips=60, judge_seed=1), quiet)["models"] == 4
    del stale["key"]
    torch.save(stale, path)
    assert jb.load_judge(path, ask(train_clips=60, judge_seed=1), quiet)["models"] == 5


def test_judge_feature_parts_cover_the_features_and_own_feature_models_read_only_theirs():
    """judge_model.FEATURE_PARTS lists `features` part by part (lengths that sum to its length), and a
    classifier fitted on some columns ignores the others."""
    from bench import judge_model as jm

    t = np.arange(4 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    x = jm.features(wave, 16000)
    assert len(x) == sum(n for _, n in jm.FEATURE_PARTS)
    assert np.all(np.diff(jm.feature_columns(name for name, _ in jm.FEATURE_PARTS)) == 1)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, len(x)))
    y = (xs[:, 0] > 0).astype(int)                           # decided by the first tempo feature
    cols = jm.feature_columns(jm.OWN_FEATURES["tempo"])
    model = jm.fit(xs, y, 2, cols, steps=200)
    assert (jm.predict(model, xs) == y).mean() > 0.9
    other = xs.copy()
    other[:, np.setdiff1d(np.arange(len(x)), cols)] = rng.normal(size=(60, len(x) - len(cols))) * 100
    assert np.array_equal(jm.predict(model, other), jm.predict(model, xs))


def test_key_profile_tells_a_tune_in_one_key_from_pitches_off_the_grid():
    """judge_model.key_profile: notes of a C major tune on equal-tempered pitches sit on the semitone
    grid, all in one scale and on its tonic; the same notes detuned at random (up to half a semitone,
    with out-of-scale notes among them) do not."""
    from bench import judge_model as jm

    rate, rng = 16000, np.random.default_rng(0)
    def tune(midis):
        t = np.arange(int(0.25 * rate)) / rate
        notes = [np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) * np.hanning(len(t)) ** 0.2 for m in midis]
        return 0.3 * np.concatenate(notes)
    c_major = [60, 64, 67, 72, 67, 64, 60, 62, 65, 69, 65, 62, 60, 64, 67, 60]       # resting on C
    grid, in_key, lean = jm.key_profile(tune(c_major), rate)
    assert grid > 0.7 and in_key > 0.9 and lean > 0.2, (grid, in_key, lean)
    wild = rng.uniform(55, 75, 16)
    grid, in_key, _ = jm.key_profile(tune(wild), rate)
    assert grid < 0.5 and in_key < 0.9, (grid, in_key)
    assert all(np.isnan(jm.key_profile(np.zeros(rate), rate)))
