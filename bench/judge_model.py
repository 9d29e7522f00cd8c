"""The judge of bench/judge.py: classifiers trained on real toy-corpus clips that say which tempo,
instrument, drums and mode a clip has.

Real clips are rendered by toy_corpus.py (the corpus's own synthesizer, its own attribute draws,
written to 16-bit as the corpus files are), with the tunes split in two: clips of the first 80% of
the tunes train the judge, clips of the rest test it. Every training clip is used clean and in
degraded copies (white or pink noise at 0-30 dB SNR, a 1.6 kHz or random low-pass, a Griffin-Lim
round trip through data.log_mel, a slow random pitch wobble), so that an artifact of a stage
(hiss, a blurred spectrogram, a wobbling pitch, the 3.2 kHz band) does not decide the label.

Features (`features`, all at 16 kHz):
- tempo: the autocorrelation of a spectral-flux onset curve (log-mel at 100 fps, each band's
  median removed) at lags of 0.05-1.5 s, log-spaced, and audio_measures.onset_rate;
- timbre and register: MFCC means and deviations (audio_measures.mfcc_stats), the mean log-mel in
  20 bands, pitch quantiles from the NSDF tracker, and the harmonic profile (the level of
  harmonics 2-8 against the fundamental, median over voiced frames);
- drums: the percussive share of a median-filter HPSS (Fitzgerald 2010) of the mel spectrogram,
  overall and in 8 band groups, and statistics of the flux;
- mode: pitch-class histograms (of the tracked notes, and a spectral chroma of 100-2000 Hz and of
  the 100-260 Hz chord register) rotated so that index 0 is the tonic of the best-fitting major
  scale; relative major and minor share their notes, so the mode is which degree (1 or 6) the tune
  rests on, and the classifier learns the weights.
One multinomial logistic regression per attribute on all the standardized features (torch, Adam, L2),
or, with `own_features`, on that attribute's own group above.
"""
import math
import os
import sys

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import audio_measures  # noqa: E402
import data  # noqa: E402
import toy_corpus  # noqa: E402

RATE = 16000
# The tempo words are slow and fast; a medium clip (95-125 bpm, neither word) is left out of the tempo
# classifier's training and testing, as no prompt asks for it.
ATTRIBUTES = {"tempo": ("slow", "fast"), "instrument": toy_corpus.INSTRUMENTS,
              "drums": (False, True), "mode": ("major", "minor")}
_MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# real clips

def render_real(tunes, n, seed, seconds=4.0, fixed=None):
    """n real clips at 16 kHz (rendered at the corpus's 24 kHz, stored as 16-bit, resampled) and their
    attributes; `fixed` (a list of n dicts) sets attributes, the rest are drawn as the corpus does."""
    rng = np.random.default_rng(seed)
    clips, attrs = [], []
    for i in range(n):
        tune = tunes[int(rng.integers(len(tunes)))]
        a = toy_corpus.draw_attributes(rng, tune, seconds, **(fixed[i] if fixed else {}))
        wave, _ = toy_corpus.render_clip(tune, a, rng, toy_corpus.SAMPLE_RATE)
        wave = np.round(wave * 32767) / 32767                            # the corpus's 16-bit files
        clips.append(data.fft_resample(wave.astype(np.float64), toy_corpus.SAMPLE_RATE, RATE))
        attrs.append({"tempo": a["tempo"] or "medium", "instrument": a["instrument"], "drums": a["drums"],
                      "mode": a["mode"]})
    return clips, attrs


def split_tunes(tunes, share=0.8):
    """(train tunes, held-out tunes): a fixed split by position in the asset."""
    cut = int(len(tunes) * share)
    return tunes[:cut], tunes[cut:]


# ------------------------------------------------------------------------------------------------
# degradations

def add_noise(wave, snr_db, rng, pink=False):
    """wave plus white (or pink: 1/f power) noise at snr_db under the clip's RMS."""
    noise = rng.standard_normal(len(wave))
    if pink:
        spectrum = np.fft.rfft(noise)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
        noise = np.fft.irfft(spectrum, n=len(wave))
    rms = lambda x: np.sqrt(np.mean(x ** 2)) + 1e-12
    return wave + noise * rms(wave) / rms(noise) * 10 ** (-snr_db / 20)


def low_pass(wave, cutoff):
    """An ideal low-pass at `cutoff` Hz (cutoff 1600: the wave generator's 3.2 kHz band)."""
    spectrum = np.fft.rfft(wave)
    spectrum[np.fft.rfftfreq(len(wave), 1 / RATE) >= cutoff] = 0
    return np.fft.irfft(spectrum, n=len(wave))


def griffin_lim_round_trip(wave):
    """The clip's log-mel rendered back by data.griffin_lim (the spectrogram path's blur)."""
    spec = data.log_mel(torch.tensor(wave, dtype=torch.float32), RATE)
    out = data.griffin_lim(spec).double().numpy()
    return np.pad(out, (0, max(0, len(wave) - len(out))))[:len(wave)]


def pitch_wobble(wave, rng, cents=None, hz=None):
    """A time warp whose rate swings sinusoidally by +-cents (default 10-60) at hz (default 2-8 Hz)."""
    cents = rng.uniform(10, 60) if cents is None else cents
    hz = rng.uniform(2, 8) if hz is None else hz
    t = np.arange(len(wave)) / RATE
    ratio = 2 ** (cents / 1200 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi)))
    position = np.clip(np.cumsum(ratio) - ratio[0], 0, len(wave) - 1)
    return np.interp(position, np.arange(len(wave)), wave)


DEGRADATIONS = {                                 # name: f(wave, rng), the held-out table's columns
    "white noise 10 dB": lambda w, r: add_noise(w, 10, r),
    "pink noise 10 dB": lambda w, r: add_noise(w, 10, r, pink=True),
    "low-pass 1.6 kHz": lambda w, r: low_pass(w, 1600),
    "Griffin-Lim": lambda w, r: griffin_lim_round_trip(w),
    "pitch wobble 40 cents": lambda w, r: pitch_wobble(w, r, cents=40, hz=5),
}


def random_degradation(wave, rng):
    """One to three degradations at random strengths (the training copies)."""
    kinds = rng.choice(5, size=int(rng.integers(1, 4)), replace=False)
    for k in sorted(kinds):
        if k == 0:
            wave = griffin_lim_round_trip(wave)
        elif k == 1:
            wave = pitch_wobble(wave, rng)
        elif k == 2:
            wave = low_pass(wave, 1600 if rng.random() < 0.5 else rng.uniform(2000, 7000))
        else:
            wave = add_noise(wave, rng.uniform(0, 30), rng, pink=bool(k == 4))
    return wave


# ------------------------------------------------------------------------------------------------
# features

def _onset_curve(spec_db):
    """Spectral flux (100 fps) of a dB log-mel (80, F), each band's median floor removed, normalized."""
    level = np.maximum(spec_db - np.median(spec_db, axis=1, keepdims=True), 0)
    flux = np.maximum(np.diff(level, axis=1), 0).sum(axis=0)
    return flux / (flux.std() + 1e-9)


_LAGS = np.unique(np.round(np.geomspace(5, 150, 32)).astype(int))     # 0.05-1.5 s at 100 fps


def tempo_features(spec_db, wave):
    flux = _onset_curve(spec_db)
    x = flux - flux.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1:]
    ac = ac / (ac[0] + 1e-9)
    return np.concatenate([ac[_LAGS], [audio_measures.onset_rate(wave, RATE), flux.mean(), np.percentile(flux, 90)]])


def _pitch_track(wave):
    """(f0 Hz per voiced frame, its frame's RMS, the frames (N, 2048)) of the NSDF tracker at 16 kHz."""
    n = 2048
    starts = np.arange(0, len(wave) - n + 1, n // 2)
    frames = wave[starts[:, None] + np.arange(n)[None, :]]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = rms > 0.1 * rms.max() if rms.max() > 0 else rms > 1
    frames, rms = frames[loud], rms[loud]
    if len(frames) == 0:
        return np.zeros(0), np.zeros(0), frames
    periods = audio_measures._periods(audio_measures._nsdf(frames), int(RATE / 1600), int(math.ceil(RATE / 30)))
    ok = np.isfinite(periods)
    return RATE / periods[ok], rms[ok], frames[ok]


def harmonic_profile(f0, frames, count=8):
    """Median over voiced frames of the level (dB) of harmonics 2..count against the fundamental."""
    if len(f0) == 0:
        return np.full(count - 1, -60.0)
    nfft = 4096
    mag = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), n=nfft, axis=1))
    levels = []
    for h in range(1, count + 1):
        bins = np.round(h * f0 * nfft / RATE).astype(int)
        idx = np.clip(bins[:, None] + np.arange(-2, 3)[None, :], 0, mag.shape[1] - 1)
        level = mag[np.arange(len(f0))[:, None], idx].max(axis=1)
        levels.append(np.where(h * f0 < 7500, 20 * np.log10(level + 1e-9), np.nan))
    levels = np.stack(levels, axis=1)
    rel = np.clip(levels[:, 1:] - levels[:, :1], -60, 20)
    out = np.nanmedian(np.where(np.isnan(rel), -60, rel), axis=0)
    return out


def _rotate_to_major(hist):
    """hist (12,) rotated so that index 0 is the tonic of the major scale that fits it best."""
    scores = [np.dot(np.roll(_MAJOR, k), hist) for k in range(12)]
    return np.roll(hist, -int(np.argmax(scores))), int(np.argmax(scores))


def _chroma(power, lo, hi):
    """Spectral chroma (12,) of the band lo..hi Hz of a power STFT (F, frames): log-compressed power
    folded to pitch classes."""
    freqs = np.arange(power.shape[0]) * RATE / (2 * (power.shape[0] - 1))
    band = (freqs >= lo) & (freqs <= hi)
    pcs = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    level = np.log1p(power[band] / (power[band].max() + 1e-20) * 1e3).sum(axis=1)
    chroma = np.bincount(pcs, weights=level, minlength=12)
    return chroma / (chroma.sum() + 1e-9)


def mode_features(f0, rms):
    midi = 69 + 12 * np.log2(np.maximum(f0, 1) / 440.0)
    hist = np.bincount(np.round(midi).astype(int) % 12, weights=rms, minlength=12) if len(f0) else np.zeros(12)
    hist = hist / (hist.sum() + 1e-9)
    rotated, tonic = _rotate_to_major(hist)
    return rotated, tonic


def percussive_features(spec_db):
    """HPSS of the mel power: the percussive share overall and in 8 band groups."""
    power = 10 ** (spec_db / 10)
    harmonic = ndimage.median_filter(power, size=(1, 21), mode="reflect")
    percussive = ndimage.median_filter(power, size=(9, 1), mode="reflect")
    mask = percussive ** 2 / (harmonic ** 2 + percussive ** 2 + 1e-30)
    share = [(mask * power)[g].sum() / (power[g].sum() + 1e-30) for g in np.array_split(np.arange(80), 8)]
    return np.concatenate([[(mask * power).sum() / (power.sum() + 1e-30)], share])


def _mfcc_stats(spec, n_coeffs=20):
    """audio_measures.mfcc_stats from an already computed log-mel (80, F)."""
    from scipy.fft import dct
    mfcc = dct(spec, type=2, axis=0, norm="ortho")[:n_coeffs]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


# The parts of `features`, in order, with their lengths; and the parts each attribute's own classifier
# reads with `--own-features` (bench/judge.py score), a check of how much the choice of features moves
# the readings of generated clips.
FEATURE_PARTS = (("tempo", len(_LAGS) + 3), ("mfcc", 40), ("bands", 20), ("pitch", 3), ("voiced", 1),
                 ("harmonic", 7), ("percussive", 9), ("notes", 12), ("chroma", 12), ("chord chroma", 12))
OWN_FEATURES = {"tempo": ("tempo",), "instrument": ("mfcc", "bands", "pitch", "voiced", "harmonic"),
                "drums": ("percussive",), "mode": ("notes", "chroma", "chord chroma")}


def feature_columns(parts):
    """Column indices in `features` of the named parts."""
    starts = np.cumsum([0] + [n for _, n in FEATURE_PARTS])
    where = {name: np.arange(starts[i], starts[i + 1]) for i, (name, _) in enumerate(FEATURE_PARTS)}
    return np.concatenate([where[p] for p in parts])


def _at_judge_rate(wave, rate):
    """One clip as the judge measures it: float64 at 16 kHz, at RMS 0.1 (loudness is not an attribute)."""
    wave = np.asarray(wave, dtype=np.float64)
    if rate != RATE:
        wave = data.fft_resample(wave, rate, RATE)
    return wave / (np.sqrt(np.mean(wave ** 2)) + 1e-9) * 0.1


def key_profile(wave, rate):
    """(on the grid, in key, tonic lean) of one clip's tracked notes, weighted as mode_features weights them:
    - on the grid: how closely pitches sit on equal-tempered semitones (the length of the mean of
      exp(2 pi i x cents / 100); 1: every pitch on a semitone, ~0: spread evenly between them);
    - in key: the share of their weight inside the 7-note scale that fits them best. Real toy clips, whose
      notes are snapped to one scale, are ~0.95 in key; random pitch classes still fit some scale, at 0.84
      (10 notes) to 0.71 (40 notes);
    - tonic lean: the weight of that scale's degree 1 (the major tonic) minus its degree 6 (the relative
      minor's tonic): which of the two the tune rests on.
    NaN where no notes are tracked."""
    f0, rms, _ = _pitch_track(_at_judge_rate(wave, rate))
    if len(f0) == 0:
        return float("nan"), float("nan"), float("nan")
    midi = 69 + 12 * np.log2(f0 / 440.0)
    grid = abs(np.sum(rms * np.exp(2j * np.pi * (midi - np.round(midi))))) / rms.sum()
    rotated, _ = mode_features(f0, rms)
    return float(grid), float(rotated[_MAJOR > 0].sum()), float(rotated[0] - rotated[9])


def features(wave, rate):
    """The judge's feature vector of one clip (any rate; measured at 16 kHz)."""
    wave = _at_judge_rate(wave, rate)
    spec = data.log_mel(wave.astype(np.float32), RATE).astype(np.float64)    # (80, F) in [-1, 1]
    spec_db = data.denormalize_db(torch.from_numpy(spec)).numpy()
    f0, rms, frames = _pitch_track(wave)
    midi = 69 + 12 * np.log2(np.maximum(f0, 1) / 440.0) if len(f0) else np.array([60.0])
    notes, tonic = mode_features(f0, rms)
    roll = lambda h: np.roll(h, -tonic)
    power, _ = audio_measures._stft_power(wave, RATE, 0.128, 0.064)
    parts = [
        tempo_features(spec_db, wave),
        _mfcc_stats(spec),
        np.array([s.mean() for s in np.array_split(spec, 20, axis=0)]),
        np.percentile(midi, [10, 50, 90]) / 100, [len(f0) / max(1, len(frames) + 1)],
        harmonic_profile(f0, frames) / 20,
        percussive_features(spec_db),
        notes * 12, roll(_chroma(power, 100, 2000)) * 12, roll(_chroma(power, 100, 260)) * 12,
    ]
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])


# ------------------------------------------------------------------------------------------------
# classifiers

def labels(attrs, name):
    """Class index of each clip's attribute `name`; -1 where the value is not a class (a medium tempo)."""
    return np.array([ATTRIBUTES[name].index(a[name]) if a[name] in ATTRIBUTES[name] else -1 for a in attrs])


def fit(x, y, classes, columns=None, decay=1e-3, steps=600, seed=0):
    """A multinomial logistic regression on standardized x (only `columns` of it, if given):
    {'mean', 'std', 'weight', 'bias', 'columns'}."""
    torch.manual_seed(seed)
    x, y = x[y >= 0], y[y >= 0]
    x = x if columns is None else x[:, columns]
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y)
    layer = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + decay * layer.weight.pow(2).sum()
        loss.backward()
        opt.step()
    return {"mean": mean, "std": std, "weight": layer.weight.detach().numpy(), "bias": layer.bias.detach().numpy(),
            "columns": columns}


def predict(model, x):
    """Class indices for rows of x."""
    x = x if model.get("columns") is None else x[:, model["columns"]]
    z = ((x - model["mean"]) / model["std"]) @ model["weight"].T + model["bias"]
    return z.argmax(axis=1)
