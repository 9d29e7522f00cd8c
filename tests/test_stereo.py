"""The stereo extension: the stereo toy corpus, left/right data, the stereo super-res stage and
sample.py --stereo (tiny checkpoints, plus the shipped toy stereo stage where it is needed)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import cascade
import data
import toy_corpus
from bench.stereo import correlation, ild_db, mixdown_loss_db
from tests.helpers import train_tiny_cascade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [f"--{s}-steps=2" for s in cascade.STAGES]
SHIPPED = os.path.join(ROOT, "checkpoints", "toy", "stereo.pt")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return train_tiny_cascade(tmp_path_factory.mktemp("stereo"))


def _run(*args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _low_band(x, rate, cutoff):
    """x [... x T] with every bin at or above `cutoff` Hz zeroed."""
    spectrum = np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1)
    spectrum[..., np.fft.rfftfreq(x.shape[-1], 1 / rate) >= cutoff] = 0
    return np.fft.irfft(spectrum, n=x.shape[-1], axis=-1)


def _stereo_clip(instrument, drums=False, seed=0):
    """One stereo toy clip of 1 s: ((2, T) audio, attributes with pans)."""
    rng = np.random.default_rng(seed)
    tune = toy_corpus.load_tunes()[0]
    attrs = toy_corpus.draw_attributes(rng, tune, 1.0, instrument=instrument, drums=drums)
    audio, _, pans = toy_corpus.render_stereo(tune, attrs, rng, np.random.default_rng([seed, 2]))
    return audio, dict(attrs, **pans)


# ------------------------------------------------------------------------------------------------
# Data

def test_stereo_corpus_has_pans_in_the_manifest_and_two_channels(tmp_path):
    config = toy_corpus.ToyConfig(clips=6, unlabeled=0, seconds=1.0, stereo=True)
    toy_corpus.write_corpus(str(tmp_path), config, progress=False)
    entries = [json.loads(line) for line in open(tmp_path / "manifest.jsonl")]
    for e in entries:
        attrs = e["attributes"]
        assert attrs["channels"] == 2
        assert abs(attrs["pan"] - toy_corpus.STEREO_PANS[attrs["instrument"]]) <= toy_corpus.PAN_JITTER + 1e-9
        assert ("drum_pans" in attrs) == attrs["drums"]
        audio, rate = sf.read(tmp_path / e["audio"])
        assert audio.shape == (24000, 2) and rate == 24000


def test_stereo_corpus_keeps_the_mono_corpus_captions(tmp_path):
    """The stereo rendering draws its pans and room from a random stream of its own."""
    manifests = []
    for stereo in (False, True):
        out = tmp_path / str(stereo)
        toy_corpus.write_corpus(str(out), toy_corpus.ToyConfig(clips=4, unlabeled=0, seconds=1.0, stereo=stereo),
                                progress=False)
        manifests.append([json.loads(line) for line in open(out / "manifest.jsonl")])
    assert [e["captions"] for e in manifests[0]] == [e["captions"] for e in manifests[1]]
    assert all("pan" not in e["attributes"] for e in manifests[0])
    assert sf.info(str(tmp_path / "False" / manifests[0][0]["audio"])).channels == 1


def test_a_hard_left_flute_is_louder_on_the_left():
    audio, attrs = _stereo_clip("flute")
    assert attrs["pan"] <= -0.8
    assert ild_db(audio) > 10                         # constant power at pan -0.8: 20 log10(cot(pi/20)) = 16 dB
    guitar, attrs = _stereo_clip("guitar")            # right of centre
    assert attrs["pan"] >= 0.7 and ild_db(guitar) < -6


def test_stereo_clip_mid_is_normalized_and_panning_keeps_power():
    audio, _ = _stereo_clip("piano", drums=True)
    mid_rms, peak = np.sqrt(np.mean(audio.mean(axis=0) ** 2)), np.abs(audio).max()
    assert mid_rms <= 0.1 + 1e-4 and peak <= 0.95 + 1e-4
    assert abs(mid_rms - 0.1) < 1e-4 or abs(peak - 0.95) < 1e-4       # -20 dBFS mid unless the peak limits it
    for pan in (-1.0, -0.3, 0.0, 0.6, 1.0):
        gl, gr = toy_corpus.pan_gains(pan)
        assert abs(gl ** 2 + gr ** 2 - 1) < 1e-12
    assert toy_corpus.pan_gains(-1.0)[1] < 1e-12 and toy_corpus.pan_gains(1.0)[0] < 1e-12


def test_load_clips_keeps_left_and_right_only_when_asked(tmp_path):
    t = np.arange(24000) / 24000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 24000)
    entries = [{"audio": str(tmp_path / "s.wav"), "captions": ["x"]}]
    (_, mono), = data.load_clips(entries, 16000, 4.0, progress=False)[0]
    (_, both), = data.load_clips(entries, 16000, 4.0, progress=False, channels=2)[0]
    assert mono.shape == (16000,) and both.shape == (2, 16000)
    np.testing.assert_allclose(both.mean(axis=0), mono, atol=1e-6)
    assert abs(ild_db(both) - 20 * np.log10(4)) < 0.01


def test_training_the_stereo_stage_from_a_prepared_folder_is_refused(tmp_path):
    """Prepared folders (store.py) hold mono mix-downs: one line, exit 2, before any work."""
    import store
    from tests.helpers import write_tone_manifest
    manifest = write_tone_manifest(str(tmp_path / "tones"), n=2, seconds=1.0)
    store.prepare(manifest, str(tmp_path / "prepared"), rates=(24000,), progress=False)
    r = subprocess.run([sys.executable, "train.py", "--stage", "stereo", "--data", str(tmp_path / "prepared"),
                        "--out", str(tmp_path / "run"), "--steps", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "mono" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run" / "stereo.pt").exists()


# ------------------------------------------------------------------------------------------------
# Mid and side, and the stage's band

def test_mid_side_round_trip():
    x = torch.randn(3, 2, 100, dtype=torch.float64)
    ms = cascade.lr_to_mid_side(x)
    torch.testing.assert_close(ms[:, 0], x.mean(dim=1))
    torch.testing.assert_close(cascade.mid_side_to_lr(ms), x)
    np.testing.assert_allclose(cascade.mid_side_to_lr(cascade.lr_to_mid_side(x.numpy())), x.numpy())


def test_keep_input_band_of_a_stereo_output_takes_the_mid_band_only():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 2, 2400, generator=gen)
    cond = data.fft_resample(torch.randn(2, 1, 1600, generator=gen), 16000, 24000)
    kept = cascade.keep_input_band(out, cond, 24000, 16000)
    assert kept.shape == out.shape
    torch.testing.assert_close(kept[:, 1:], out[:, 1:])                     # side as made
    np.testing.assert_allclose(_low_band(kept[:, :1].numpy(), 24000, 8000), _low_band(cond.numpy(), 24000, 8000),
                               atol=1e-5)
    high = lambda x: x.numpy() - _low_band(x.numpy(), 24000, 8000)
    np.testing.assert_allclose(high(kept[:, :1]), high(out[:, :1]), atol=1e-5)


def test_stereo_preset_beside_super_res():
    for scale in cascade.SCALES:
        mono, stereo = cascade.stage_spec("super-res", scale), cascade.stage_spec("stereo", scale)
        assert stereo.channels == 2 and stereo.unet.in_channels == 2 and stereo.unet.cond_channels == 1
        assert (stereo.sample_rate, stereo.cond_rate, stereo.keep_band) == (24000, 16000, True)
        assert stereo.unet.base_dim == mono.unet.base_dim and stereo.steps == mono.steps


def test_training_example_is_mid_and_side_with_the_mid_as_input():
    spec = cascade.stage_spec("stereo")
    audio, _ = _stereo_clip("flute")
    audio = cascade.fit_length(audio, spec.length)           # the whole clip (crop 0) is the preset's length
    ex = cascade.training_example(spec, audio, 0, np.random.default_rng(0))
    x0 = ex["x0"]
    assert x0.shape == (2, spec.length) and ex["cond"].shape == (1, spec.length)
    np.testing.assert_allclose(x0[0], audio.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(x0[1], (audio[0] - audio[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(ex["cond"][0], cascade.low_fidelity(x0[0], 24000, 16000), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The stage in the cascade, and sample.py

def _stages(ckpts, names):
    return {n: cascade.StageModel(os.path.join(ckpts, f"{n}.pt")) for n in names}


@pytest.mark.parametrize("seconds", [0.5, 1.37])
def test_stereo_cascade_channels_length_and_mid_is_the_16khz_output(ckpts, seconds):
    import text
    stages = _stages(ckpts, ("wave-generator", "cascader", "stereo"))
    encoder = text.load_t5(stages["wave-generator"].t5)
    knobs = {s: cascade.Sampling(steps=2) for s in cascade.STAGES}
    keep = {}
    out = cascade.cascade_generate(stages, encoder, ["a flute", "drums"], "wave", seconds, 0, knobs, keep=keep,
                                   stereo=True)
    n3 = round(seconds * 24000)
    assert out.shape == (2, 2, n3) and torch.isfinite(out).all()
    mid = out.mean(dim=1).numpy()                                   # the mix-down (L + R) / 2
    given = data.fft_resample(keep["cascader"], 16000, 24000)[:, 0, :n3].numpy()
    np.testing.assert_allclose(_low_band(mid, 24000, 8000), _low_band(given, 24000, 8000),
                               atol=1e-5 * np.abs(given).max())


def test_mono_cascade_is_unchanged_by_the_stereo_stage(ckpts):
    """Without --stereo the cascade's output is mono (B, T), as before the stage existed, even with
    the stereo stage loaded beside the others."""
    import text
    stages = _stages(ckpts, cascade.PIPELINES["wave"] + (cascade.STEREO,))
    encoder = text.load_t5(stages["wave-generator"].t5)
    knobs = {s: cascade.Sampling(steps=2) for s in cascade.STAGES}
    out = cascade.cascade_generate(stages, encoder, ["a flute"], "wave", 0.5, 0, knobs)
    assert out.shape == (1, 12000)
    assert cascade.pipeline_stages("spec") == cascade.PIPELINES["spec"]
    assert cascade.pipeline_stages("spec", stereo=True)[-1] == cascade.STEREO


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_sample_stereo_writes_two_channels(ckpts, tmp_path, pipeline):
    r = _run("fast flute", "--ckpt-dir", ckpts, "--pipeline", pipeline, "--seconds", "0.5", "--stereo",
             "--out", str(tmp_path / "s.wav"), "--save-stages", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    wave, rate = sf.read(tmp_path / "s.wav")
    assert wave.shape == (12000, 2) and rate == 24000 and np.isfinite(wave).all()
    assert sf.info(str(tmp_path / "s_stereo.wav")).channels == 2
    assert (tmp_path / "s_stereo.png").exists()


def test_sample_stereo_past_the_training_length(ckpts, tmp_path):
    """Long-form: generator windows, then the stereo stage once over the whole length."""
    r = _run("slow organ", "--ckpt-dir", ckpts, "--seconds", "6.5", "--stereo", "--out", str(tmp_path / "l.wav"),
             *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    wave, _ = sf.read(tmp_path / "l.wav")
    assert wave.shape == (6.5 * 24000, 2)


def test_sample_stereo_errors(ckpts, tmp_path):
    folder = tmp_path / "no_stereo"
    shutil.copytree(ckpts, folder)
    os.remove(folder / "stereo.pt")
    r = _run("x", "--ckpt-dir", str(folder), "--stereo", "--out", str(tmp_path / "x.wav"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "stereo.pt" in r.stderr, r.stderr
    clip = tmp_path / "in.wav"
    sf.write(clip, np.sin(np.arange(24000) / 10).astype(np.float32) * 0.1, 24000)
    r = _run("x", "--ckpt-dir", ckpts, "--stereo", "--inpaint", str(clip), "--region", "0.2:0.4")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--stereo" in r.stderr, r.stderr


def test_upsample_stereo_makes_a_stereo_clip_of_the_given_length(ckpts, tmp_path):
    clip = tmp_path / "in.wav"
    sf.write(clip, (0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32), 16000)
    r = _run("x", "--ckpt-dir", ckpts, "--stereo", "--upsample", str(clip), "--out", str(tmp_path / "u.wav"), *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    wave, rate = sf.read(tmp_path / "u.wav")
    assert wave.shape == (24000, 2) and rate == 24000


# ------------------------------------------------------------------------------------------------
# Measures, and the shipped toy stage

def test_stereo_measures_closed_forms():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 48000))
    panned = np.array(toy_corpus.pan_gains(-0.5))[:, None] * x
    assert abs(mixdown_loss_db(panned)) < 1e-9 and abs(correlation(panned) - 1) < 1e-9
    assert abs(ild_db(panned) - 20 * np.log10(1 / np.tan(np.pi / 8))) < 1e-9
    assert abs(mixdown_loss_db(np.stack([x, y])) - 10 * np.log10(2)) < 0.1    # uncorrelated: 3 dB
    assert abs(correlation(np.stack([x, y]))) < 0.02 and abs(correlation(np.stack([x, -x])) + 1) < 1e-9


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="no shipped stereo checkpoint")
def test_shipped_stereo_stage_mixes_down_with_under_1_db_of_cancellation():
    stage = cascade.StageModel(SHIPPED, stage="stereo")
    outs = []
    for k, instrument in enumerate(("flute", "guitar")):
        audio, _ = _stereo_clip(instrument, drums=True, seed=10 + k)
        x2 = data.fft_resample(torch.from_numpy(audio.mean(axis=0).astype(np.float64)), 24000, 16000).float()
        gen = torch.Generator().manual_seed(0)
        ms = cascade.third_stage(stage, x2[None, None], 1.0, cascade.Sampling(), gen)
        outs.append(cascade.final_audio(ms)[0].numpy())
    for lr in outs:
        assert lr.shape == (2, 24000) and np.isfinite(lr).all()
        assert mixdown_loss_db(lr) < 1.0
    assert ild_db(outs[0]) > ild_db(outs[1])          # the flute stands left of the guitar
