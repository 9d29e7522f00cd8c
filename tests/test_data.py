"""Tests for data.py (sections 3.3, 3.6, 4.1), the toy corpus and the audio measurements (audio_measures.py)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

import audio_measures
import cascade
import data
import diffusion
import toy_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# FFT resampling (section 3.3.1)

@pytest.mark.parametrize("orig_sr,new_sr", [(3200, 16000), (16000, 3200), (16000, 24000),
                                            (24000, 16000)])
@pytest.mark.parametrize("length", [2, 3, 17, 960, 961, 999, 1000, 1001])
def test_fft_resample_matches_scipy(orig_sr, new_sr, length):
    rng = np.random.default_rng(length)
    x = rng.standard_normal((2, 3, length))
    num = length * new_sr // orig_sr
    if num == 0:
        pytest.skip("no output sample")
    want = scipy.signal.resample(x, num, axis=-1)
    got = data.fft_resample(x, orig_sr, new_sr)
    assert isinstance(got, np.ndarray) and got.shape == (2, 3, num)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    got_t = data.fft_resample(torch.from_numpy(x), orig_sr, new_sr)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5, rtol=0)


def test_fft_upsampling_is_exact_on_band_limited_clips():
    # A periodic sine below 1.6 kHz at 3.2 kHz is the same sine at 16 kHz, and back again.
    t3 = np.arange(3200) / 3200.0
    t16 = np.arange(16000) / 16000.0
    low = np.sin(2 * np.pi * 440 * t3 + 0.3)
    up = data.fft_resample(low, 3200, 16000)
    np.testing.assert_allclose(up, np.sin(2 * np.pi * 440 * t16 + 0.3), atol=1e-9)
    np.testing.assert_allclose(data.fft_resample(up, 16000, 3200), low, atol=1e-9)
    assert data.fft_resample(low, 3200, 3200) is low


# ----------------------------------------------------------------------------------------------
# Log-mel spectrogram (section 3.3.2)

def _reference_htk_filters(n_mels, n_fft, sr, fmin, fmax):
    """Independent HTK mel triangles: np.interp through (lower, centre, upper) in Hz."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    points = [hz(m) for m in np.linspace(mel(fmin), mel(fmax), n_mels + 2)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    return np.stack([np.interp(freqs, points[i:i + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
                     for i in range(n_mels)])


def test_mel_filterbank_matches_htk_formula():
    fb = data.mel_filterbank()
    want = _reference_htk_filters(80, 1024, 16000, 0.0, 8000.0)
    assert fb.shape == (80, 513)
    np.testing.assert_allclose(fb, want, atol=1e-9)
    assert (fb.max(axis=1) > 0.5).all()  # every channel sees at least one FFT bin
    assert abs(data.hz_to_mel(1000.0) - 1000.0) < 0.1  # the HTK scale's anchor
    np.testing.assert_allclose(data.mel_to_hz(data.hz_to_mel([55.0, 4000.0])), [55.0, 4000.0])


def test_log_mel_shape_range_and_frame_rate():
    torch.manual_seed(0)
    wave = 0.3 * torch.randn(2, 3, 32000)
    spec = data.log_mel(wave)
    assert spec.shape == (2, 3, data.MEL_BINS, 200)  # 2 s at 100 fps
    assert spec.min() >= -1 and spec.max() <= 1
    assert data.log_mel(torch.randn(32000 + 159)).shape == (80, 200)  # frames = T // 160
    assert data.log_mel(np.zeros(16000, dtype=np.float32)).min() == -1.0  # silence at the floor
    assert isinstance(data.log_mel(np.zeros(1600)), np.ndarray)
    assert data.log_mel(torch.randn(24000), sample_rate=24000).shape == (80, 100)
    with pytest.raises(ValueError):
        data.log_mel(torch.zeros(100))


def test_log_mel_puts_a_tone_in_its_channel_and_a_click_in_its_frame():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    spec = data.log_mel(0.5 * torch.sin(2 * np.pi * 1000 * t))
    centres = data.mel_to_hz(np.linspace(0, data.hz_to_mel(8000.0), 82))[1:-1]
    assert int(spec[:, 50].argmax()) == int(np.abs(centres - 1000).argmin())
    # Frame i is centred on sample 160 i + 80.
    click = torch.zeros(16000, dtype=torch.float64)
    click[160 * 37 + 80] = 1.0
    energy = data.denormalize_db(data.log_mel(click)).sum(dim=0)
    assert int(energy.argmax()) == 37


def test_db_normalisation_round_trips():
    db = torch.linspace(data.DB_MIN, data.DB_MAX, 50)
    x = data.normalize_db(db)
    assert x.min() == -1 and x.max() == 1
    torch.testing.assert_close(data.denormalize_db(x), db)
    mel = torch.tensor([1e-3, 0.5, 2.0])
    torch.testing.assert_close(data.db_to_mel(data.mel_to_db(mel)), mel)


# ----------------------------------------------------------------------------------------------
# Manifests and real audio (section 3.6)

def _write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_read_manifest_resolves_paths_and_names_bad_lines(tmp_path):
    good = tmp_path / "m.jsonl"
    _write_lines(good, ['{"audio": "a/x.wav", "captions": ["hi"]}', "",
                        '{"audio": "/abs/y.flac"}'])
    entries = data.read_manifest(good)
    assert entries[0]["audio"] == str(tmp_path / "a" / "x.wav")
    assert entries[1]["audio"] == "/abs/y.flac" and entries[1]["captions"] == []
    bad = tmp_path / "bad.jsonl"
    _write_lines(bad, ['{"audio": "x.wav"}', '{"audio": "y.wav"}', '{"audio": "z.wav",'])
    with pytest.raises(data.ManifestError, match=r"bad\.jsonl:3: not valid JSON"):
        data.read_manifest(bad)
    _write_lines(bad, ['{"audio": "x.wav"}', '{"captions": []}'])
    with pytest.raises(data.ManifestError, match=r"bad\.jsonl:2: .*audio"):
        data.read_manifest(bad)
    with pytest.raises(data.ManifestError, match="cannot read"):
        data.read_manifest(tmp_path / "missing.jsonl")


def _audio_zoo(tmp_path):
    """Good and bad files; returns the manifest path."""
    rng = np.random.default_rng(0)
    tone = lambda sr, s: 0.5 * np.sin(2 * np.pi * 220 * np.arange(int(sr * s)) / sr)  # noqa
    sf.write(tmp_path / "long.wav", tone(8000, 70.0), 8000)  # 70 s -> two 30 s clips
    stereo = np.stack([tone(22050, 2.0), 0.5 * tone(22050, 2.0)], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, 22050)
    sf.write(tmp_path / "good.wav", 0.1 * rng.standard_normal(16000), 16000, subtype="PCM_16")
    raw = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    nan = 0.1 * rng.standard_normal(1600)
    nan[7] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "silent.wav", np.zeros(1600), 16000)
    names = ["long.wav", "stereo.flac", "good.wav", "truncated.wav", "empty.wav", "text.wav",
             "nan.wav", "silent.wav", "missing.wav"]
    manifest = tmp_path / "m.jsonl"
    _write_lines(manifest, [json.dumps({"audio": n, "captions": []}) for n in names])
    return manifest


def test_load_clips_skips_bad_files_and_cuts_30s_clips(tmp_path, capsys):
    entries = data.read_manifest(_audio_zoo(tmp_path))
    clips, skipped = data.load_clips(entries, 16000, progress=False)
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert set(reasons) == {"truncated.wav", "empty.wav", "text.wav", "nan.wav", "silent.wav",
                            "missing.wav"}
    assert "truncated" in reasons["truncated.wav"] and "empty" in reasons["empty.wav"]
    assert "not readable" in reasons["text.wav"] and "NaN" in reasons["nan.wav"]
    assert reasons["silent.wav"] == "silent" and reasons["missing.wav"] == "missing file"
    err = capsys.readouterr().err
    for name in reasons:
        assert err.count(name) == 1  # each reported once
    assert "skipped 6 of 9 audio files" in err
    names = [os.path.basename(e["audio"]) for e, _ in clips]
    assert names == ["long.wav", "long.wav", "stereo.flac", "good.wav"]
    assert [len(w) for _, w in clips] == [480000, 480000, 32000, 16000]
    assert [e["clip_start"] for e, _ in clips[:2]] == [0.0, 30.0]
    assert all(w.dtype == np.float32 and w.ndim == 1 for _, w in clips)
    # Stereo mixed down to mono: the mean of a tone and half of it, 0.75 of the tone.
    assert abs(np.abs(clips[2][1]).max() - 0.375) < 0.01


def test_load_clips_cache_is_used(tmp_path):
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(np.arange(4000) / 5.0), 8000)
    entries = [{"audio": str(tmp_path / "a.wav"), "captions": []}]
    cache = tmp_path / "cache"
    first, _ = data.load_clips(entries, 16000, cache_dir=str(cache), progress=False)
    assert len(os.listdir(cache)) == 1
    np.save(cache / os.listdir(cache)[0], np.full(8000, 0.25, dtype=np.float32))  # poison it
    second, _ = data.load_clips(entries, 16000, cache_dir=str(cache), progress=False)
    assert len(first[0][1]) == 8000 and (second[0][1] == 0.25).all()
    third, _ = data.load_clips(entries, 3200, cache_dir=str(cache), progress=False)
    assert len(third[0][1]) == 1600  # another rate, another key


# ----------------------------------------------------------------------------------------------
# Text batches (section 4.1)

def test_text_entries_long_captions_then_chunked_tags():
    entry = {"captions": ["one long sentence.", "two", "three"],
             "tags": ["fast", "flute melody", "major key", "irish folk", "reel", "a b c d e f g"],
             "metadata": {"title": "The Lark", "form": "reel", "key": "D major"},
             "pseudo_tags": ["happy"]}
    entries = data.text_entries(entry, token_len=4)
    assert entries[:3] == ["one long sentence.", "two", "three"]
    chunks = entries[3:]
    assert all(len(c.split()) <= 4 for c in chunks)
    joined = ", ".join(chunks)
    order = ["fast", "flute melody", "major key", "irish folk", "reel", "a b c d", "e f g",
             "happy", "The Lark", "reel", "D major"]
    assert joined == ", ".join(order)
    by_chars = data.text_entries(entry, token_len=30, count_tokens=len)
    assert all(len(c) <= 30 for c in by_chars[3:])
    assert data.text_entries({"captions": [], "pseudo_captions": ["p"]}, 8) == ["p"]


def test_draw_text_unconditional_when_no_text():
    rng = np.random.default_rng(0)
    assert data.draw_text(data.text_entries({"audio": "x", "captions": []}, 64), rng) == ""
    entries = ["a", "b", "c"]
    assert {data.draw_text(entries, rng) for _ in range(50)} == set(entries)


# ----------------------------------------------------------------------------------------------
# Crops (section 4.1)

def test_random_crop_keeps_wave_and_frames_aligned():
    rng = np.random.default_rng(0)
    wave = np.arange(16000 * 4)
    frames = torch.arange(16000 * 4 // 160)[None, :].repeat(80, 1)  # (80, frames)
    for _ in range(20):
        length = data.draw_crop_length(0.4, 0.53, 16000, rng, multiple=160)
        assert 0.4 * 16000 - 160 <= length <= 0.53 * 16000 and length % 160 == 0
        w, f = data.random_crop([wave, frames], length, rng, hops=[1, 160])
        assert len(w) == length and f.shape == (80, length // 160)
        assert w[0] == 160 * int(f[0, 0]) and (f[:, 0] == f[0, 0]).all()
    short = data.random_crop([np.ones(100)], 160, rng)[0]
    assert len(short) == 160 and short[100:].sum() == 0
    with pytest.raises(ValueError):
        data.random_crop([wave, frames], 1000, rng, hops=[1, 160])


# ----------------------------------------------------------------------------------------------
# Conditioning augmentation (section 4.1)

def test_blur_kernels_and_sigma_ranges():
    for scale in cascade.SCALES:
        assert cascade.stage_spec("cascader", scale).augmentation == data.Augmentation(0.5, "1d", (0.1, 5.0), 10)
        assert cascade.stage_spec("vocoder", scale).augmentation == data.Augmentation(1.0, "2d", (0.2, 1.0), 5)
        assert cascade.stage_spec("super-res", scale).augmentation == data.Augmentation(1.0)
    k = data.gaussian_kernels(torch.tensor([0.1, 1.0, 5.0]), 10)
    torch.testing.assert_close(k.sum(dim=1), torch.ones(3))
    assert k.shape == (3, 10) and int(k[1].argmax()) == 5  # offsets -5..4
    sigma = data.random_blur_sigma(1000, (0.1, 5.0), torch.Generator().manual_seed(0))
    assert 0.1 <= sigma.min() and sigma.max() <= 5.0 and sigma.std() > 1.0


def test_blur_1d_preserves_sum_and_is_identity_at_small_sigma():
    x = torch.zeros(3, 2, 200)
    x[:, :, 90:110] = torch.randn(3, 2, 20)
    sigma = torch.tensor([0.1, 1.0, 5.0])
    y = data.blur_1d(x, sigma)
    torch.testing.assert_close(y.sum(dim=-1), x.sum(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[0], x[0], atol=1e-6, rtol=0)
    # An impulse spreads with variance ~sigma^2; wider sigma, wider spread.
    impulse = torch.zeros(3, 1, 101, dtype=torch.float64)
    impulse[:, :, 50] = 1.0
    response = data.blur_1d(impulse, sigma.double())[:, 0]
    offsets = torch.arange(101, dtype=torch.float64) - 50
    variance = (response * offsets ** 2).sum(dim=1)
    assert abs(variance[1] - 1.0) < 0.01 and variance[2] > 3 * variance[1]
    constant = torch.full((1, 1, 64), 0.7)
    torch.testing.assert_close(data.blur_1d(constant, torch.tensor([3.0])), constant)


def test_blur_2d_is_a_separable_5x5_gaussian():
    spec = torch.zeros(2, 80, 40, dtype=torch.float64)
    spec[:, 40, 20] = 1.0
    sigma = torch.tensor([0.2, 1.0], dtype=torch.float64)
    out = data.blur_2d(spec, sigma)
    k = data.gaussian_kernels(sigma, 5)
    for b in range(2):
        torch.testing.assert_close(out[b, 38:43, 18:23], torch.outer(k[b], k[b]))
        assert abs(out[b].sum() - 1.0) < 1e-12 and out[b].abs().sum() - 1.0 < 1e-12
    torch.testing.assert_close(out[0], spec[0], atol=1e-4, rtol=0)  # sigma 0.2: nearly identity
    assert out.min() >= 0 and out.max() <= 1  # a blur keeps [-1, 1] spectrograms in range


def test_noise_augment_draws_t_in_range_and_uses_q_sample():
    cond = torch.randn(256, 1, 64)
    gen = torch.Generator().manual_seed(0)
    noisy, t = data.noise_augment(cond, 0.5, "linear", gen)
    assert noisy.shape == cond.shape and t.shape == (256,)
    assert 0 <= t.min() and t.max() <= 0.5 and t.max() > 0.45 and t.min() < 0.05
    gen = torch.Generator().manual_seed(0)
    t2 = 0.5 * torch.rand(256, generator=gen)
    eps = torch.randn(cond.shape, generator=gen)
    torch.testing.assert_close(t, t2)
    torch.testing.assert_close(noisy, diffusion.q_sample(cond, t2, eps, "linear"))
    spec = torch.rand(4, 80, 50) * 2 - 1
    out, t = data.augment_conditioning(spec, cascade.stage_spec("vocoder").augmentation, "linear",
                                       torch.Generator().manual_seed(1))
    assert out.shape == spec.shape and t.max() <= 1.0


# ----------------------------------------------------------------------------------------------
# The toy corpus and its vocabulary

def _corpus(out, seed):
    config = toy_corpus.ToyConfig(clips=6, unlabeled=2, seconds=1.0, seed=seed)
    toy_corpus.write_corpus(str(out), config, progress=False)


def test_toy_corpus_is_deterministic_and_honours_its_vocabulary(tmp_path):
    _corpus(tmp_path / "a", 7)
    _corpus(tmp_path / "b", 7)
    _corpus(tmp_path / "c", 8)
    files = ["manifest.jsonl", "unlabeled/manifest.jsonl", "heldout_captions.jsonl"]
    files += [f"audio/{n}" for n in sorted(os.listdir(tmp_path / "a" / "audio"))]
    assert len(files) == 3 + 8
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/audio/clip_000000.flac").read_bytes() != \
        (tmp_path / "c/audio/clip_000000.flac").read_bytes()
    labeled = data.read_manifest(tmp_path / "a" / "manifest.jsonl")
    unlabeled = data.read_manifest(tmp_path / "a" / "unlabeled" / "manifest.jsonl")
    assert len(labeled) == 6 and len(unlabeled) == 2
    assert all(os.path.exists(e["audio"]) for e in labeled + unlabeled)
    assert all(e["captions"] == [] and "attributes" in e for e in unlabeled)
    for e in labeled:
        assert len(e["captions"]) == 3 and e["tags"] and e["metadata"]["title"]
        texts = e["captions"] + e["tags"] + [str(v) for v in e["metadata"].values()]
        assert toy_corpus.vocabulary_violations(texts, e["attributes"]) == []
        a = e["attributes"]
        lo, hi = toy_corpus.REGISTERS[a["instrument"]]
        assert lo <= a["note_range"][0] and a["note_range"][1] <= hi
        wave, rate = sf.read(e["audio"])
        assert rate == 24000 and len(wave) == 24000
    heldout = [json.loads(x) for x in open(tmp_path / "a" / "heldout_captions.jsonl")]
    train_captions = {c for e in labeled for c in e["captions"]}
    assert len(heldout) == 120 and not train_captions & {h["caption"] for h in heldout}
    for h in heldout:
        assert toy_corpus.vocabulary_violations([h["caption"]], dict(h["attributes"], tempo=(
            h["attributes"]["tempo"]))) == []


def test_vocabulary_of_many_clips_and_modes():
    tunes = toy_corpus.load_tunes()
    rng = np.random.default_rng(3)
    for _ in range(300):
        tune = tunes[int(rng.integers(len(tunes)))]
        attrs = toy_corpus.draw_attributes(rng, tune, 4.0)
        texts = (toy_corpus.long_captions(tune, attrs, rng)
                 + toy_corpus.short_tags(tune, attrs, rng)
                 + list(toy_corpus.metadata(tune, attrs).values()))
        assert toy_corpus.vocabulary_violations(texts, attrs) == [], texts
        melody, _ = toy_corpus.arrange(tune, attrs, rng)
        scale = {(attrs["tonic"] + d) % 12 for d in toy_corpus.SCALES[attrs["mode"]]}
        assert {m % 12 for _, _, m in melody} <= scale  # the mode is true
        lo, hi = toy_corpus.TEMPO_RANGES[{None: "medium"}.get(attrs["tempo"], attrs["tempo"])]
        assert lo <= attrs["bpm"] <= hi


def _measure(measure, rate, n=10, seed=0, **fixed):
    """Measure n clips with fixed attributes, synthesized at 24 kHz and resampled to `rate`."""
    tunes = toy_corpus.load_tunes()
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        tune = tunes[int(rng.integers(len(tunes)))]
        attrs = toy_corpus.draw_attributes(rng, tune, 3.0, **fixed)
        audio, _ = toy_corpus.render_clip(tune, attrs, rng)
        values.append(measure(data.fft_resample(audio.astype(np.float64), 24000, rate), rate))
    return np.array(values)


def test_fast_clips_have_more_onsets_than_slow_ones():
    slow = _measure(audio_measures.onset_rate, 24000, tempo="slow", seed=1)
    fast = _measure(audio_measures.onset_rate, 24000, tempo="fast", seed=2)
    assert np.median(fast) > 1.6 * np.median(slow) and fast.mean() > 1.6 * slow.mean()


def test_onset_rate_ignores_a_steady_hiss():
    """White noise 20 dB under the music (RMS 0.01 against 0.1) neither adds onsets nor flips the order."""
    rng = np.random.default_rng(7)
    hiss = lambda w, r: audio_measures.onset_rate(w + 0.01 * rng.standard_normal(len(w)), r)
    slow = _measure(hiss, 24000, tempo="slow", seed=1)
    fast = _measure(hiss, 24000, tempo="fast", seed=2)
    assert np.median(fast) > 1.6 * np.median(slow)
    assert np.all(np.abs(slow - _measure(audio_measures.onset_rate, 24000, tempo="slow", seed=1)) <= 1.0)
    sr = 16000
    clicks = np.zeros(2 * sr)
    clicks[::sr // 4] = 1.0
    assert abs(hiss(clicks, sr) - 4.0) <= 0.5


@pytest.mark.parametrize("rate", [16000, 3200])
def test_bass_clips_are_lower_than_flute_clips(rate):
    bass = _measure(audio_measures.median_pitch, rate, instrument="bass", seed=3)
    flute = _measure(audio_measures.median_pitch, rate, instrument="flute", seed=4)
    assert bass.max() < 53 and np.median(flute) > 71 and np.median(flute) - np.median(bass) > 24


def test_median_pitch_is_the_same_at_any_rate():
    """The same audio measures alike at 24 and 16 kHz. Flutes with drums are the hard case: with
    frames of a fixed sample count (85 ms at 24 kHz, 128 ms at 16 kHz) the second of these clips
    measured 82.97 at 24 kHz and 78.03 at 16 kHz."""
    at24 = _measure(audio_measures.median_pitch, 24000, n=3, seed=11, instrument="flute", drums=True)
    at16 = _measure(audio_measures.median_pitch, 16000, n=3, seed=11, instrument="flute", drums=True)
    assert np.all(np.isfinite(at24)) and np.abs(at24 - at16).max() < 0.05


def test_drum_clips_are_more_percussive_than_solo_ones():
    drums = _measure(audio_measures.percussive_ratio, 24000, drums=True, seed=5)
    solo = _measure(audio_measures.percussive_ratio, 24000, drums=False, seed=6)
    assert drums.min() > 2 * solo.max()


def test_measurements_on_closed_form_signals():
    sr = 16000
    t = np.arange(2 * sr) / sr
    assert abs(audio_measures.median_pitch(np.sin(2 * np.pi * 110.0 * t), sr) - 45.0) < 0.1
    clicks = np.zeros(2 * sr)
    clicks[::sr // 4] = 1.0  # 4 clicks per second
    assert abs(audio_measures.onset_rate(clicks, sr) - 4.0) <= 0.5
    sine = np.sin(2 * np.pi * 440 * t[:sr])
    assert audio_measures.percussive_ratio(sine, sr) < 0.05 < audio_measures.percussive_ratio(clicks, sr)


def test_noise_floor_falls_as_noise_is_added():
    """A clean tone's floor lies far under its peaks; each 10 dB more white noise lifts it; noise alone ~10 dB."""
    sr, rng = 16000, np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    tone = 0.1 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 880 * t)
    floors = [audio_measures.noise_floor_db(tone + level * rng.standard_normal(len(t)), sr)
              for level in (0.0, 1e-4, 1e-3, 1e-2)]
    assert floors[0] > 100 and all(a > b + 5 for a, b in zip(floors, floors[1:]))
    assert 5 < audio_measures.noise_floor_db(rng.standard_normal(len(t)), sr) < 20
    # only the band under 8 kHz (and under Nyquist) counts: hiss above 8 kHz at 24 kHz changes nothing
    t24 = np.arange(2 * 24000) / 24000
    tone24 = np.sin(2 * np.pi * 440 * t24) + 1e-3 * rng.standard_normal(len(t24))
    high = np.fft.irfft(np.where(np.fft.rfftfreq(len(t24), 1 / 24000) > 8500,
                                 np.fft.rfft(0.1 * rng.standard_normal(len(t24))), 0), n=len(t24))
    assert abs(audio_measures.noise_floor_db(tone24 + high, 24000) - audio_measures.noise_floor_db(tone24, 24000)) < 3


def test_band_floors_find_the_band_with_the_hiss():
    """Hiss between 2 and 4 kHz only: that band's floor falls to near white noise's, the others stay
    far under the peaks; bands above the Nyquist rate are NaN."""
    sr, rng = 16000, np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    tone = 0.1 * np.sin(2 * np.pi * 440 * t) + 1e-6 * rng.standard_normal(len(t))
    spectrum = np.fft.rfft(0.01 * rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1 / sr)
    hiss = np.fft.irfft(np.where((freqs > 2000) & (freqs < 4000), spectrum, 0), n=len(t))
    quiet, hissy = (audio_measures.band_floors_db(x, sr) for x in (tone, tone + hiss))
    assert len(quiet) == len(audio_measures.FLOOR_BANDS_HZ) - 1 and quiet.min() > 70
    assert hissy[3] < quiet[3] - 40 and np.allclose(np.delete(hissy, 3), np.delete(quiet, 3), atol=3)
    low = audio_measures.band_floors_db(tone[::5], sr // 5)
    assert np.isnan(low[3:]).all() and not np.isnan(low[:3]).any()


def test_confident_notes_in_tones_and_real_clips_not_in_noise():
    sr, rng = 16000, np.random.default_rng(1)
    t = np.arange(2 * sr) / sr
    tone = sum(np.sin(2 * np.pi * h * 196.0 * t) / h for h in range(1, 6))
    assert audio_measures.confident_note_fraction(tone, sr) == 1.0
    assert audio_measures.confident_note_fraction(rng.standard_normal(2 * sr), sr) < 0.2
    assert math.isnan(audio_measures.confident_note_fraction(np.zeros(sr), sr))
    solo = _measure(audio_measures.confident_note_fraction, 24000, n=4, seed=2, drums=False)
    assert solo.min() > 0.85


def test_mfcc_stats_match_across_rates_and_separate_tones_from_noise():
    sr, rng = 16000, np.random.default_rng(2)
    t = np.arange(2 * sr) / sr
    tone = 0.1 * np.sin(2 * np.pi * 330 * t)
    stats = audio_measures.mfcc_stats(tone, sr)
    assert stats.shape == (40,)
    at24 = audio_measures.mfcc_stats(data.fft_resample(tone, sr, 24000), 24000)
    assert np.abs(at24 - stats).max() < 1e-3
    noise = audio_measures.mfcc_stats(0.1 * rng.standard_normal(len(t)), sr)
    assert np.linalg.norm(noise - stats) > 1.0


# ----------------------------------------------------------------------------------------------
# Command lines: --help works, bad usage exits 2 with one line and no traceback

def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_command_lines(tmp_path):
    assert _run("data.py", "toy", "--help").returncode == 0
    bad = _run("data.py", "toy", "--out", str(tmp_path), "--clips", "many")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    manifest = tmp_path / "m.jsonl"
    _write_lines(manifest, ['{"audio": "x.wav"}', "{oops"])
    bad = _run("data.py", "check", str(manifest))
    assert bad.returncode == 2 and bad.stderr.strip().endswith("m.jsonl:2: not valid JSON "
                                                              "(Expecting property name "
                                                              "enclosed in double quotes)")
    assert len(bad.stderr.strip().splitlines()) == 1
    sf.write(tmp_path / "x.wav", 0.5 * np.sin(np.arange(3200) / 3.0), 16000)
    out = _run("evaluate.py", "analyze", str(tmp_path / "x.wav"))
    assert out.returncode == 0 and "onsets" in out.stdout
    bad = _run("evaluate.py", "analyze", str(tmp_path / "nope.wav"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "missing file" in bad.stderr
    sf.write(tmp_path / "nan.wav", np.full(3200, np.nan, np.float32), 16000, subtype="FLOAT")
    bad = _run("evaluate.py", "analyze", str(tmp_path / "nan.wav"))
    assert bad.returncode == 2 and bad.stderr.strip().endswith("nan.wav: NaN or infinite samples"), bad.stderr


@pytest.mark.parametrize("args", [["train.py", "--stage", "nope"], ["evaluate.py", "nope"], ["data.py", "nope"],
                                  ["pseudolabel.py", "train", "--no-such-flag"], ["data.py", "toy", "--clips", "x"],
                                  ["sample.py", "x", "--seconds", "-1"]])
def test_every_command_line_says_a_bad_flag_in_one_line(args):
    bad = _run(*args)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith(f"{args[0]}") and "error:" in bad.stderr, bad.stderr


def test_tune_asset_is_small_and_vocabulary_free():
    assert os.path.getsize(toy_corpus.TUNES_PATH) < 2 * 1024 * 1024
    tunes = toy_corpus.load_tunes()
    assert len(tunes) > 500 and len({t["id"] for t in tunes}) == len(tunes)
    for tune in tunes:
        fields = [tune.get(k, "") for k in ("title", "composer", "form", "region", "source")]
        assert not toy_corpus._VOCAB_RE.search(" ".join(fields)), fields
        assert len(tune["notes"]) >= 16 and tune["beat"] > 0 and tune["bar"] > 0


def test_griffin_lim_inverts_log_mel_up_to_phase():
    """A two-partial tone and a bass note: Griffin-Lim of their log-mel has the same log-mel in its
    loud bins (the top 30 dB; within 3 dB on average), the same pitch and the same loudness."""
    t = np.arange(32000) / 16000
    for f0, midi in ((440.0, 69.0), (65.41, 36.0)):
        wave = 0.1 * np.sin(2 * np.pi * f0 * t) + 0.05 * np.sin(2 * np.pi * 2 * f0 * t)
        wave = torch.tensor(wave, dtype=torch.float32)
        spec = data.log_mel(wave)
        back = data.griffin_lim(spec[None])[0]
        assert back.shape == wave.shape
        loud = spec > spec.max() - 0.25                       # 0.25 of the [-1, 1] range = 30 dB
        assert (data.log_mel(back) - spec)[:, 5:-5][loud[:, 5:-5]].abs().mean() < 0.05
        assert audio_measures.median_pitch(back.numpy(), 16000) == pytest.approx(midi, abs=0.3)
        assert float(back.pow(2).mean().sqrt()) == pytest.approx(float(wave.pow(2).mean().sqrt()), rel=0.1)
    silence = data.griffin_lim(torch.full((2, 80, 10), -1.0))
    assert silence.shape == (2, 1600) and silence.abs().max() < 1e-3


def _chord(seconds=1.0, noise=0.0, seed=0):
    """Two steady partials (330 and 2500 Hz) plus white noise of standard deviation `noise`, at 16 kHz."""
    t = torch.arange(round(16000 * seconds), dtype=torch.float64) / 16000
    hiss = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return 0.2 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.sin(2 * math.pi * 2500 * t + 1.0) + noise * hiss


def test_fit_to_mel_restores_a_magnitude_with_the_right_detail_at_the_wrong_level():
    """Every band off by one factor: one Richardson-Lucy round gives the true magnitude back, bin for
    bin (the even spread of mel_magnitude does not); a log-mel at its floor gives silence."""
    wave = _chord(noise=1e-2)
    spec = data.log_mel(wave)                                             # (80, 100)
    shifted = torch.nn.functional.pad(wave[None, data.MEL_HOP // 2:], (0, data.MEL_HOP // 2))
    true = data._stft(shifted).abs()                                      # (1, 513, 101)
    fitted = data.fit_to_mel(0.3 * true, spec[None], 1)
    inner = (slice(None), slice(1, 512), slice(5, 95))                    # away from the clip's padded ends
    assert torch.allclose(fitted[inner], true[inner], rtol=1e-2, atol=1e-9)
    smooth = data.mel_magnitude(spec)[None]
    assert not torch.allclose(smooth[inner], true[inner], rtol=0.1)
    silent = data.fit_to_mel(true, torch.full_like(spec, -1.0)[None], 3)
    assert float(silent.max()) < 1e-6 * float(true.max())


def test_fitted_projection_keeps_the_gaps_between_partials():
    """A 220 Hz tone with 36 partials (every mel band holds some) projected onto the log-mel of the
    same tone, louder and swelling: the smooth magnitude fills the gaps between partials with each
    band's mean power (a floor, audio_measures.noise_floor_db, near 47 dB), the fitted one keeps the
    estimate's gaps (within 2 dB of the target's 65) and meets the log-mel more closely."""
    t = torch.arange(16000, dtype=torch.float64) / 16000
    tone = sum(torch.sin(2 * math.pi * 220 * k * t + k) / k for k in range(1, 37))
    hiss = torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = 0.1 * tone * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t))
    spec = data.log_mel(target)
    assert float(spec.min()) > -0.99                                     # no band at the floor
    smooth, fitted = (data.project_to_mel(0.05 * tone + 1e-4 * hiss, spec, fit=k) for k in (0, 10))
    floor = lambda x: audio_measures.noise_floor_db(x.numpy(), 16000)
    assert floor(fitted) > floor(target) - 2 and floor(fitted) > floor(smooth) + 12
    error = lambda x: float((data.log_mel(x) - spec)[:, 5:-5].abs().mean())
    assert error(fitted) < 0.005 < error(smooth)


def test_project_to_mel_takes_the_magnitude_and_keeps_the_phase():
    """A steady 440 Hz tone projected onto the log-mel of a 0.25 s burst of the same tone, 3x as
    loud: the result is that burst (same timing and loudness; the tone's phase, which both share),
    its log-mel near the target's; batch axes pass through."""
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 440 * t + 0.3)
    burst = ((t > 0.25) & (t < 0.5)).float()
    target = 0.3 * tone * burst
    out = data.project_to_mel(0.1 * tone, data.log_mel(target))
    assert out.shape == target.shape
    assert float((out * target).sum() / (out.norm() * target.norm())) > 0.97
    assert float(out[4400:7600].std() / target[4400:7600].std()) == pytest.approx(1.0, abs=0.1)
    assert float((out * (1 - burst)).pow(2).sum() / out.pow(2).sum()) < 0.03
    assert (data.log_mel(out) - data.log_mel(target)).abs().mean() < 0.05
    batch = data.project_to_mel(torch.stack([0.1 * tone, 0.2 * tone])[:, None], data.log_mel(torch.stack([target, target])))
    assert batch.shape == (2, 1, 16000) and torch.allclose(batch[0, 0], out, atol=1e-5)
