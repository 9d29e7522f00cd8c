"""Evaluation of Noise2Music (sections 4.3-4.6 of Huang et al. 2023): FAD, MuLan similarity,
the Table 5/6-style results of the toy cascade and the inference ablations of Figures 2 and 3.

    python evaluate.py analyze FILE...                 # onset rate, pitch, percussive ratio
    python evaluate.py fad DIR_A DIR_B [--embedder mfcc|mulan]
    python evaluate.py results   [--ckpt-dir checkpoints/toy] [--n 40] [--out results]
    python evaluate.py ablations [--ckpt-dir checkpoints/toy] [--n 24] [--out results/ablations]

Where the paper's pieces live:
- section 4.3.2, FAD (Kilgour et al. 2018): the Frechet distance between Gaussian fits of two
  embedding sets -> `gaussian_fit`, `frechet_distance`, `fad`;
- its audio encoders -> the embedders, each a callable from log-mel spectrograms (N, 80, F) (the
  16 kHz, 100 fps `data.log_mel`) to embeddings (N, K, E), K windows per clip:
    `MfccEmbedder` ("MFCC"): fixed, untrained statistics, independent of anything trained here
        (it stands where the paper's VGGish stands: VGGish and Trill weights are not public in
        a form we may ship, NOTES trap 7); per 1 s window (VGGish frames are 0.96 s), the mean
        and standard deviation of 13 MFCCs and the mean absolute MFCC change between frames;
    `MulanEmbedder` ("MuLan"): our MuLan-style audio tower (pseudolabel.py), clip-wise, windows
        averaged as pseudolabel.embed_audio does;
- MuLan similarity: cosine similarity of generated audio with its prompt ("audio <-> gt-text")
  and with ground-truth audio ("audio <-> gt-audio"), beside the ground truth and a randomly
  shuffled pairing -> `similarity_rows`, laid out like Table 6 by `results`;
- the protocol of 4.3.1/4.3.3: 16 kHz outputs (the super-resolution stage is skipped:
  `generate_first`, `generate_second` run the first two stages exactly as cascade_generate does),
  and the middle 10 s of a 30 s output (`middle`; a toy clip of 4 s is scored whole);
- section 4.5, Figure 2 (CFG scale w in {1, 2, 5, 10, 15}; back-heavy, uniform, front-heavy
  step schedules) and section 4.6, Figure 3 (step counts against inference time) -> `ablations`,
  with PNG plots drawn by a tiny rasterizer (`Canvas`; no plotting package needed).

The toy evaluation set (`eval_set`): prompts are the toy corpus's held-out phrasings
(heldout_captions.jsonl, never used as training captions), and each prompt's ground truth is a set
of corpus clips whose TRUE attributes (tempo, instrument, mode, drums) are the ones the prompt
names. Per prompt, `refs` clips form the FAD reference set R, and one more clip, B, stands for
"the ground truth audio" (a real clip that fits the prompt), so that FAD(B, R) is the floor a
perfect generator would reach with the same number of clips.

Simplifications, all deliberate (and what they mean for the numbers):
- No VGGish or Trill: FAD_MFCC replaces FAD_VGG; its values are on another scale from the paper's.
- FAD from few clips is biased upwards (Binkowski et al. 2018); compare rows of one table only,
  which share N, and read them against the ground-truth floor, not as absolute numbers. FAD_MuLan
  with N < E = 128 clips fits a singular covariance; the distance is still well defined.
- The toy corpus has no audio held out from the cascade's training: ground-truth clips are
  training clips (the prompts' phrasings are held out). MuLan was trained on 90% of them too.
- The toy MuLan is the one that pseudo-labelled and produced the text encoder (as in the paper,
  where MuLan pseudo-labels the training data: section 4.4's caveat applies doubly here).
- The untrained baseline is each stage's U-Net with fresh random weights (same config, same
  sampler and text encoder): a floor for "no learning at all".
- Ablations vary one stage at a time, as Figure 2 does, from Table 3's defaults (toy step counts);
  a first stage is scored at its own output (3.2 kHz audio, or its log-mel), a second stage at
  16 kHz with the first stage's default output held fixed, and all configurations share prompts
  and noise seeds (common random numbers), so differences are not noise between draws.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


class UsageError(ValueError):
    """A mistake a user can make (a missing file, a bad flag): one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Audio measurements of prompt adherence (the toy corpus's audible vocabulary, INTERFACES.md)
#
# The paper scores adherence with MuLan similarity. The toy corpus also uses words with audible,
# measurable meanings, and these plain numpy/scipy measurements check them:
# - `onset_rate`: note onsets per second, from a spectral-flux novelty curve with peak picking
#   (Bello et al., 2005); `fast` clips must score above `slow` ones;
# - `median_pitch`: the median fundamental in MIDI numbers, from the normalized square difference
#   function of each frame (McLeod & Wyvill, 2005); separates `bass` (28-52) from `flute` (72-88);
# - `percussive_ratio`: the share of spectrogram energy that median-filtering harmonic/percussive
#   separation (Fitzgerald, 2010) assigns to the percussive part; `drums` above `solo`.
# All three work at any sample rate from 3.2 kHz up: window lengths are set in seconds.
def _stft_power(wave, sample_rate, window_seconds, hop_seconds):
    """|STFT|^2 with a Hann window: an [F x frames] array; the window a power of two in samples."""
    n_fft = 2 ** int(round(math.log2(window_seconds * sample_rate)))
    hop = max(1, int(round(hop_seconds * sample_rate)))
    wave = np.asarray(wave, dtype=np.float64)
    wave = np.pad(wave, (n_fft // 2, n_fft // 2))
    n_frames = 1 + max(0, (len(wave) - n_fft) // hop)
    index = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = wave[index] * np.hanning(n_fft)[None, :]
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T, hop


def onset_rate(wave, sample_rate):
    """Onsets per second: peaks of the log-magnitude spectral flux (10 ms frames).

    The magnitudes are taken relative to the clip's loudest bin, each bin's median over the clip
    (its stationary floor) is subtracted, and so is a floor 40 dB under the loudest bin: a steady
    hiss, even 20 dB under the music, then adds no flux (without this, white noise at an RMS of
    0.003 under toy clips at 0.1 turned slow clips into fast ones: bench/adherence.py checks real
    clips with and without added noise). The flux follows SuperFlux's vibrato suppression. A peak
    counts when it is the largest within +-50 ms and exceeds both 10% of the largest flux and the
    local mean over +-100 ms by 5% of the largest flux.
    """
    power, hop = _stft_power(wave, sample_rate, 0.04, 0.01)
    mag = np.sqrt(power)
    mag = mag / max(mag.max(), 1e-20)
    mag = np.maximum(mag - np.median(mag, axis=1, keepdims=True) - 0.01, 0.0)   # floors: stationary, -40 dB
    log_mag = np.log1p(100.0 * mag)
    # SuperFlux (Boeck & Widmer, 2013): compare with the previous frame's maximum over +-1 bin,
    # so that vibrato moving a partial by a bin is not heard as an onset.
    previous = ndimage.maximum_filter1d(log_mag[:, :-1], size=3, axis=0)
    flux = np.maximum(0.0, log_mag[:, 1:] - previous).sum(axis=0)  # (frames - 1,)
    if flux.max() <= 0:
        return 0.0
    flux = flux / flux.max()
    local_max = flux == ndimage.maximum_filter1d(flux, size=11)
    local_mean = ndimage.uniform_filter1d(flux, size=21)
    peaks = local_max & (flux > 0.1) & (flux > local_mean + 0.05)
    return float(peaks.sum()) / (len(wave) / sample_rate)


def _nsdf(frames):
    """Normalized square difference function of each row: 2 r(tau) / m(tau), in [-1, 1]."""
    n = frames.shape[1]
    spec = np.fft.rfft(frames, n=2 * n, axis=1)
    r = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]  # autocorrelation, lags 0..n-1
    sq = frames ** 2
    left = np.cumsum(sq[:, ::-1], axis=1)[:, ::-1]  # sum of x[tau:]^2
    right = np.cumsum(sq, axis=1)[:, ::-1]  # sum of x[:n - tau]^2
    return 2.0 * r / (left + right + 1e-12)


def _periods(nsdf, lo, hi, threshold=0.9, voiced=0.5):
    """Period in samples of each row: its first key maximum >= threshold * its best; else nan.

    Key maxima are the positive local maxima at lags lo..hi; a row whose best is below `voiced`
    is unvoiced. The peak is refined by parabolic interpolation.
    """
    d = nsdf[:, lo - 1:hi + 2]  # lags lo-1 .. hi+1
    mid = d[:, 1:-1]
    peak = (mid > 0) & (mid >= d[:, :-2]) & (mid > d[:, 2:])
    best = np.where(peak, mid, -np.inf).max(axis=1)
    chosen = peak & (mid >= threshold * best[:, None])
    j = chosen.argmax(axis=1)  # first chosen lag, as an index into mid
    rows = np.arange(len(d))
    a, b, c = d[rows, j], d[rows, j + 1], d[rows, j + 2]
    curvature = a - 2 * b + c
    offset = np.where(curvature != 0, 0.5 * (a - c) / np.where(curvature != 0, curvature, 1), 0)
    return np.where(best >= voiced, lo + j + offset, np.nan)


PITCH_RATE = 16000   # median_pitch measures every clip at this rate


def median_pitch(wave, sample_rate, fmin=30.0, fmax=1600.0):
    """Median fundamental frequency as a MIDI number (float), over voiced, non-quiet frames.

    Every clip is first FFT-resampled to 16 kHz (exact for band-limited audio, and fmax is far
    below 8 kHz), so that short periods get enough lags and the same audio measures the same at
    any rate: frames are 2048 samples (128 ms, at least two periods of fmin), which at the clip's
    own rate would be 85 ms at 24 kHz, and on clips mixing a flute with a kick the two frame
    lengths disagreed by up to 5 semitones. Frames more than 20 dB below the loudest are ignored.
    Returns nan when no frame is voiced.
    """
    import data

    wave = np.asarray(wave, dtype=np.float64)
    if sample_rate != PITCH_RATE:
        wave, sample_rate = data.fft_resample(wave, sample_rate, PITCH_RATE), PITCH_RATE
    n = 2 ** int(math.ceil(math.log2(2 * sample_rate / fmin)))
    if len(wave) < n:
        wave = np.pad(wave, (0, n - len(wave)))
    starts = np.arange(0, len(wave) - n + 1, n // 2)
    frames = wave[starts[:, None] + np.arange(n)[None, :]]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    frames = frames[rms > 0.1 * rms.max()] if rms.max() > 0 else frames[:0]
    lo = max(2, int(sample_rate / fmax))
    hi = min(int(math.ceil(sample_rate / fmin)), n // 2 - 2)
    periods = _periods(_nsdf(frames), lo, hi)
    periods = periods[np.isfinite(periods)]
    if len(periods) == 0:
        return math.nan
    midi = 69.0 + 12.0 * np.log2(sample_rate / periods / 440.0)
    return float(np.median(midi))


def percussive_ratio(wave, sample_rate):
    """Share of energy in the percussive part of a median-filter HPSS (Fitzgerald 2010), in [0, 1].

    Median filters of ~200 ms along time (harmonic) and ~500 Hz along frequency (percussive), on a
    64 ms / 16 ms power STFT (fine enough in frequency to resolve the partials of a low E1 bass),
    and soft (Wiener) masks.
    """
    power, hop = _stft_power(wave, sample_rate, 0.064, 0.016)
    n_fft = 2 * (power.shape[0] - 1)
    time_size = max(3, int(round(0.2 / (hop / sample_rate))) | 1)
    freq_size = max(3, int(round(500.0 / (sample_rate / n_fft))) | 1)
    harmonic = ndimage.median_filter(power, size=(1, time_size), mode="reflect")
    percussive = ndimage.median_filter(power, size=(freq_size, 1), mode="reflect")
    mask = percussive ** 2 / (harmonic ** 2 + percussive ** 2 + 1e-20)
    total = power.sum()
    return float((mask * power).sum() / total) if total > 0 else 0.0


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def midi_name(midi):
    """69 -> 'A4'; nan -> '-'."""
    if not np.isfinite(midi):
        return "-"
    m = int(round(midi))
    return f"{NOTE_NAMES[m % 12]}{m // 12 - 1}"


def analyze(path):
    """The three measurements of one audio file (mixed down to mono)."""
    import soundfile as sf

    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    pitch = median_pitch(wave, rate)
    return {"file": path, "sample_rate": rate, "seconds": len(wave) / rate,
            "onset_rate": onset_rate(wave, rate), "median_pitch": pitch,
            "note": midi_name(pitch), "percussive_ratio": percussive_ratio(wave, rate)}




# ----------------------------------------------------------------------------------------------
# Frechet Audio Distance (section 4.3.2; Kilgour et al. 2018)

def gaussian_fit(emb):
    """Mean [E] and covariance [E x E] of an [N x E] embedding set, in float64 (np.cov: N - 1)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"need an [N x E] embedding set with N >= 2, got shape {emb.shape}")
    return emb.mean(axis=0), np.atleast_2d(np.cov(emb, rowvar=False))


def _psd_sqrt(a):
    """The square root of a symmetric positive semi-definite matrix, from its eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), the number FAD reports.

    It is the squared 2-Wasserstein distance between N(mu1, sigma1) and N(mu2, sigma2). The trace
    of (sigma1 sigma2)^(1/2) is taken as the sum of the square roots of the eigenvalues of the
    symmetric sigma1^(1/2) sigma2 sigma1^(1/2), which has the same eigenvalues: real, and stable
    for the singular covariances of small sets, where scipy.linalg.sqrtm of the product returns
    complex noise (the reference FAD code adds eps to the diagonals there).
    """
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    inner = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(max(0.0, diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt))


def fad(emb_a, emb_b):
    """FAD between two embedding sets, each [N x E] or [N x K x E] (K frame embeddings per clip,
    pooled into one set, as FAD_VGG pools VGGish frames)."""
    a, b = (np.asarray(e, dtype=np.float64) for e in (emb_a, emb_b))
    return frechet_distance(*gaussian_fit(a.reshape(-1, a.shape[-1])), *gaussian_fit(b.reshape(-1, b.shape[-1])))


# ----------------------------------------------------------------------------------------------
# Audio embedders: log-mel spectrograms [N x 80 x F] -> embeddings [N x K x E]

MEL_FPS = 100          # frames per second of data.log_mel
EVAL_SECONDS = 10.0    # section 4.3.3: the middle 10 s of each 30 s output is scored


def log_mels(waves, sample_rate, chunk=32):
    """[N x T] audio at `sample_rate` -> [N x 80 x F] float32 numpy: data.log_mel (16 kHz, 100 fps)."""
    import torch

    import data
    waves = torch.as_tensor(np.asarray(waves, dtype=np.float32))
    return np.concatenate([data.log_mel(waves[i:i + chunk], sample_rate).numpy()
                           for i in range(0, len(waves), chunk)])


def middle(x, rate, seconds):
    """The middle `seconds` (at `rate` per second) of the last axis of x; all of x when shorter."""
    n, total = int(round(seconds * rate)), x.shape[-1]
    if total <= n:
        return x
    start = (total - n) // 2
    return x[..., start:start + n]


class MfccEmbedder:
    """Fixed MFCC statistics: the embedder independent of anything trained in this project.

    MFCCs are the orthonormal DCT-II over the 80 channels of data.log_mel (whose values are an
    affine map of decibels, so these are MFCCs up to an offset of c0), first 13 kept. Per
    non-overlapping 1 s window (VGGish's frame-wise embeddings are per 0.96 s; a clip shorter than
    a window is one window): the mean (timbre, register, loudness), the standard deviation
    (dynamics, note changes) and the mean absolute frame-to-frame change (onset rate: tempo,
    drums) of each coefficient: E = 39 (13 as in speech front ends: fewer dimensions than the ~50
    window embeddings of a small ablation set). No weights, no data: the same audio always gives
    the same embedding, on any machine.

    What it hears is measured on real toy-corpus clips by `embedder_check` (a table in
    results.md): it separates bass from flute, drums from solo and noise from music by large
    factors, tempo only weakly (tempo moves few, low-variance coordinates, and FAD is dominated by
    timbre), where FAD_MuLan separates all four. So, as the paper reads FAD_VGG and FAD_MuLan,
    FAD_MFCC is mostly about the sound, FAD_MuLan about the music.
    """
    name = "MFCC"

    def __init__(self, n_mfcc=13, window_seconds=1.0):
        self.n_mfcc, self.window = n_mfcc, int(round(window_seconds * MEL_FPS))

    def __call__(self, mels):
        from scipy.fft import dct
        mels = np.asarray(mels, dtype=np.float64)                          # (N, 80, F)
        mfcc = dct(mels, type=2, norm="ortho", axis=1)[:, :self.n_mfcc]     # (N, 13, F)
        N, C, F = mfcc.shape
        W = min(self.window, F)
        K = F // W
        x = mfcc[:, :, :K * W].reshape(N, C, K, W)                          # (N, 13, K, W)
        stats = [x.mean(-1), x.std(-1), np.abs(np.diff(x, axis=-1)).mean(-1)]
        return np.concatenate(stats, axis=1).transpose(0, 2, 1)            # (N, K, 39)


class MulanEmbedder:
    """Our MuLan-style audio tower (pseudolabel.py): one unit vector per clip, [N x 1 x E].

    As pseudolabel.embed_audio: non-overlapping windows of the model's window_seconds (a clip
    shorter than a window is one window), each embedded and normalized, then averaged and
    normalized; here the windows are cut from the clip's log-mel rather than from its samples
    (identical for a one-window clip, as the toy's 4 s clips are). `text` embeds prompts.
    """
    name = "MuLan"

    def __init__(self, model, batch_size=32):
        self.model, self.batch_size = model, batch_size
        self.window = int(round(model.config.window_seconds * MEL_FPS))

    def __call__(self, mels):
        import torch
        import torch.nn.functional as F
        mels = torch.as_tensor(np.asarray(mels, dtype=np.float32))          # (N, 80, F)
        N, C, T = mels.shape
        W = min(self.window, T)
        K = T // W
        windows = mels[:, :, :K * W].reshape(N, C, K, W).permute(0, 2, 1, 3).reshape(N * K, C, W)
        with torch.no_grad():
            emb = torch.cat([F.normalize(self.model.audio(windows[i:i + self.batch_size]), dim=-1)
                             for i in range(0, N * K, self.batch_size)])     # (N K, E)
        return F.normalize(emb.reshape(N, K, -1).sum(1), dim=-1)[:, None].numpy()

    def text(self, texts):
        """[N] prompts -> [N x E] unit vectors (pseudolabel.embed_text)."""
        import pseudolabel
        return pseudolabel.embed_text(self.model, list(texts)).numpy()


def load_embedders(mulan_path):
    """{"MFCC": MfccEmbedder, "MuLan": MulanEmbedder} with the MuLan model of `mulan_path`."""
    import pseudolabel
    try:
        model = pseudolabel.load_mulan(mulan_path)
    except pseudolabel.MulanLoadError as e:
        raise UsageError(f"MuLan model: {e}") from None
    return {"MFCC": MfccEmbedder(), "MuLan": MulanEmbedder(model)}


# ----------------------------------------------------------------------------------------------
# MuLan similarity (section 4.3.2, Table 6)

def mulan_similarities(audio, text, refs):
    """Table 6's two numbers for a set of clips, from unit vectors:
    audio <-> gt-text, the mean of cos(audio_i, text_i), and audio <-> gt-audio, the mean of
    cos(audio_i, refs_ij) over each prompt's R ground-truth clips.

    :param audio: [N x E] clip embeddings; text: [N x E] their prompts; refs: [N x R x E].
    """
    audio, text, refs = (np.asarray(a, dtype=np.float64) for a in (audio, text, refs))
    return float((audio * text).sum(-1).mean()), float(np.einsum("ne,nre->nr", audio, refs).mean())


def derangement(n, rng):
    """A random permutation of range(n) that moves every element (n >= 2)."""
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def similarity_rows(text, gt, refs, systems, rng, shuffles=20):
    """Table 6 for one evaluation set: [(row name, audio <-> gt-text, audio <-> gt-audio)].

    Rows: "Ground truth audio" (a real clip that fits each prompt, against its prompt and against
    the prompt's other ground-truth clips), "Randomly shuffled audio" (those clips paired with
    other prompts, averaged over `shuffles` derangements), then each generated system.

    :param text: [N x E] prompt embeddings; gt: [N x E] one ground-truth clip per prompt;
    :param refs: [N x R x E] the prompts' other ground-truth clips; systems: {name: [N x E]}.
    """
    rows = [("Ground truth audio", *mulan_similarities(gt, text, refs))]
    shuffled = [mulan_similarities(gt[derangement(len(gt), rng)], text, refs) for _ in range(shuffles)]
    rows.append(("Randomly shuffled audio", *np.mean(shuffled, axis=0).tolist()))
    rows += [(name, *mulan_similarities(emb, text, refs)) for name, emb in systems.items()]
    return rows


def markdown_table(header, rows):
    """A Markdown table; floats written with 3 decimals."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


# ----------------------------------------------------------------------------------------------
# The toy evaluation set: held-out phrasings, ground truth by true attributes

HELDOUT_CAPTIONS = "heldout_captions.jsonl"


@dataclass
class EvalSet:
    prompts: list       # N held-out phrasings
    attributes: list    # N dicts: the attributes each prompt names
    clips: list         # N lists of refs + 1 corpus audio paths whose true attributes match


def read_manifest(path):
    """data.read_manifest, with its errors as UsageError."""
    import data
    try:
        return data.read_manifest(path)
    except data.ManifestError as e:
        raise UsageError(str(e)) from None


def read_heldout(path):
    """[(caption, attributes)] of a heldout_captions.jsonl."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append((str(obj["caption"]), dict(obj["attributes"])))
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path}:{number}: expected {{\"caption\": ..., \"attributes\": {{...}}}}") from None
    return out


def eval_set(corpus, n, refs, seed=0):
    """n held-out prompts, each with refs + 1 distinct corpus clips that fit it.

    Prompts are drawn across the attribute combinations first (a shuffled order of the
    combinations, one phrasing each, then the second phrasings, ...), so that n prompts cover
    min(n, combinations) of them. A clip fits a prompt when its true attributes equal every
    attribute the prompt names; no clip serves two prompts.
    """
    heldout = read_heldout(os.path.join(corpus, HELDOUT_CAPTIONS))
    entries = [e for e in read_manifest(os.path.join(corpus, "manifest.jsonl")) if isinstance(e.get("attributes"), dict)]
    groups = {}
    for caption, attributes in heldout:
        groups.setdefault(json.dumps(attributes, sort_keys=True), []).append(caption)
    rng = np.random.default_rng(seed)
    keys = [sorted(groups)[i] for i in rng.permutation(len(groups))]
    order = [(k, i) for i in range(max(map(len, groups.values()), default=0)) for k in keys if i < len(groups[k])]
    if not 2 <= n <= len(order):
        raise UsageError(f"--n must be between 2 and the {len(order)} held-out prompts of {corpus}")
    pools, result = {}, EvalSet([], [], [])
    for key, i in order[:n]:
        wanted = json.loads(key)
        if key not in pools:
            fits = [e["audio"] for e in entries if all(e["attributes"].get(a) == v for a, v in wanted.items())]
            pools[key] = [fits[j] for j in rng.permutation(len(fits))]
        if len(pools[key]) < refs + 1:
            raise UsageError(f"{corpus}: too few clips fit {key} for --refs {refs}")
        result.prompts.append(groups[key][i])
        result.attributes.append(wanted)
        result.clips.append([pools[key].pop() for _ in range(refs + 1)])
    return result


def load_ground_truth(paths, seconds, rate=16000):
    """[len(paths) x seconds * rate] float32: each clip decoded, FFT-resampled whole, its middle."""
    import cascade
    import data
    out = np.zeros((len(paths), int(round(seconds * rate))), dtype=np.float32)
    for j, path in enumerate(paths):
        try:
            wave, sr = data.decode_audio(path)
        except data.AudioError as e:
            raise UsageError(f"{path}: {e}") from None
        wave = data.fft_resample(wave.astype(np.float64), sr, rate)
        out[j] = cascade.fit_length(middle(wave, rate, seconds), out.shape[1])
    return out


# ----------------------------------------------------------------------------------------------
# Generation at 16 kHz: the first two stages of a pipeline (section 4.3.1: super-res skipped)

def reinitialize_(stage, seed):
    """Give a StageModel fresh random weights of the same U-Net: the untrained baseline."""
    import torch

    from unet1d import UNet1D
    torch.manual_seed(seed)
    stage.model = UNet1D(stage.model.config).to(stage.device).eval().requires_grad_(False)


def load_pipeline(ckpt_dir, pipeline, device="cpu", untrained_seed=None):
    """({name: cascade.StageModel} of the pipeline's first two stages, (tokenizer, encoder)).

    :param untrained_seed: when not None, the stages' weights are replaced by a fresh random
        initialization (seeded), for the untrained-model baseline.
    """
    import torch

    import cascade
    import text
    models = {}
    for k, name in enumerate(cascade.PIPELINES[pipeline][:2]):
        path = os.path.join(ckpt_dir, f"{name}.pt")
        if not os.path.isfile(path):
            raise UsageError(f"missing checkpoint {path} (train it with `python train.py --stage {name}`)")
        try:
            models[name] = cascade.StageModel(path, device, torch.bfloat16 if str(device).startswith("cuda") else None)
        except Exception as e:
            raise UsageError(f"cannot read checkpoint {path}: {(str(e).splitlines() or [''])[0]}") from None
        if untrained_seed is not None:
            reinitialize_(models[name], untrained_seed + k)
    try:
        text_encoder = text.load_t5(models[cascade.PIPELINES[pipeline][0]].t5, device=device)
    except (text.T5LoadError, OSError) as e:
        raise UsageError(f"cannot load the text encoder: {e}") from None
    return models, text_encoder


def _encode(text_encoder, prompts, spec, device):
    """T5 embeddings of prompts at a stage's token length: ((B, L, D), (B, L) mask)."""
    import torch
    tokenizer, encoder = text_encoder
    ids, mask = tokenizer(list(prompts), spec.token_len)
    with torch.no_grad():
        emb = encoder(ids.to(encoder.embed.weight.device), mask.to(encoder.embed.weight.device))
    return emb.float().to(device), mask.to(device)


def first_stage(models, text_encoder, prompts, pipeline, seconds, knobs, generator):
    """The generator of `pipeline`, as cascade_generate runs it: (B, 1, T) 3.2 kHz audio or (B, 80, F)."""
    import torch

    import cascade
    name = cascade.PIPELINES[pipeline][0]
    stage = models[name]
    text, mask = _encode(text_encoder, prompts, stage.spec, stage.device)
    shape = (len(prompts), 80 if stage.spec.output == "spec" else 1, round(seconds * stage.spec.frame_rate))
    unconditional = torch.tensor([p.strip() == "" for p in prompts])
    return cascade.run_stage(stage, knobs[name], shape, generator, text, mask, unconditional)


def second_stage(models, text_encoder, prompts, pipeline, seconds, knobs, generator, x1):
    """The cascader or vocoder of `pipeline` on the generator's output x1, as cascade_generate
    runs it: (B, 1, T) at 16 kHz."""
    import torch

    import cascade
    from data import fft_resample
    first, second = (models[n] for n in cascade.PIPELINES[pipeline][:2])
    knob, B, n2 = knobs[second.spec.name], len(prompts), round(seconds * 16000)
    x1 = x1.to(second.device)
    if second.spec.aligned:                                     # vocoder: the log-mel, aligned
        return cascade.run_stage(second, knob, (B, 1, x1.shape[-1] * 160), generator, aligned=x1)[..., :n2]
    cond = fft_resample(x1, first.spec.sample_rate, 16000)[..., :n2]
    text, mask = _encode(text_encoder, prompts, second.spec, second.device)
    unconditional = torch.tensor([p.strip() == "" for p in prompts])
    return cascade.run_stage(second, knob, (B, 1, n2), generator, text, mask, unconditional, cond=cond)


@dataclass
class Outputs:
    x: object           # [N x C x T] tensor: a stage's output for every prompt
    states: list        # the random generator's state after each batch (where the next stage goes on)
    seconds: float      # wall-clock seconds the stage took, all batches


def generate_first(models, text_encoder, prompts, pipeline, seconds, knobs, seed, batch):
    """The generator on every prompt, in batches; batch b draws from a generator seeded seed + b * batch,
    as cascade_generate(prompts[b * batch:...], seed=seed + b * batch) does."""
    import torch
    xs, states, t0 = [], [], time.perf_counter()
    for start in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed + start)
        xs.append(first_stage(models, text_encoder, prompts[start:start + batch], pipeline, seconds, knobs, gen).cpu())
        states.append(gen.get_state())
    return Outputs(torch.cat(xs), states, time.perf_counter() - t0)


def generate_second(models, text_encoder, prompts, pipeline, seconds, knobs, first: Outputs, batch):
    """The second stage on `first`, each batch going on with its generator's state: with the
    default knobs, exactly cascade_generate's 16 kHz intermediate (keep["cascader"/"vocoder"])."""
    import torch
    xs, t0 = [], time.perf_counter()
    for b, start in enumerate(range(0, len(prompts), batch)):
        gen = torch.Generator()
        gen.set_state(first.states[b])
        xs.append(second_stage(models, text_encoder, prompts[start:start + batch], pipeline, seconds, knobs, gen,
                               first.x[start:start + batch]).cpu())
    return Outputs(torch.cat(xs), [], time.perf_counter() - t0)


def default_knobs(steps=0):
    """{stage: cascade.Sampling}: Table 3's defaults; `steps` > 0 overrides every stage's step count."""
    import cascade
    return {s: cascade.Sampling(steps=steps or None) for s in cascade.STAGES}


# ----------------------------------------------------------------------------------------------
# Scoring a set of generated clips against the ground truth

@dataclass
class Reference:
    """The ground truth of an evaluation set, embedded at one representation (rate)."""
    text: np.ndarray    # [N x E] MuLan embeddings of the prompts
    refs: dict          # embedder name -> [N x R x K x E]: the FAD reference set R (R clips per prompt)
    gt: dict            # embedder name -> [N x K x E]: one more ground-truth clip B per prompt


def build_reference(embedders, text_emb, gt_mels):
    """Embed ground-truth log-mels [N x (R + 1) x 80 x F]: the first R per prompt are the reference set."""
    N, R1 = gt_mels.shape[:2]
    refs, gt = {}, {}
    for name, embed in embedders.items():
        emb = embed(gt_mels.reshape(N * R1, *gt_mels.shape[2:]))           # (N (R + 1), K, E)
        emb = emb.reshape(N, R1, *emb.shape[1:])
        refs[name], gt[name] = emb[:, :-1], emb[:, -1]
    return Reference(text_emb, refs, gt)


def score(embedders, mels, ref: Reference):
    """FAD_<embedder> against the reference set, and MuLan audio<->text, audio<->audio similarity."""
    out = {}
    for name, embed in embedders.items():
        emb = embed(mels)                                                    # (N, K, E)
        out[f"FAD_{name}"] = fad(emb, ref.refs[name])
        if name == "MuLan":
            out["sim_text"], out["sim_audio"] = mulan_similarities(emb[:, 0], ref.text, ref.refs[name][:, :, 0])
    return out


def ground_truth_scores(ref: Reference, rng):
    """The same numbers for the ground truth (clip B of each prompt) and for it shuffled."""
    out = {f"FAD_{name}": fad(ref.gt[name], ref.refs[name]) for name in ref.refs}
    rows = similarity_rows(ref.text, ref.gt["MuLan"][:, 0], ref.refs["MuLan"][:, :, 0], {}, rng)
    out["sim_text"], out["sim_audio"] = rows[0][1:]
    out["shuffled_sim_text"], out["shuffled_sim_audio"] = rows[1][1:]
    return out


CONTRASTS = (("instrument", "bass", "flute", "instrument: bass / flute"), ("tempo", "slow", "fast", "tempo: slow / fast"),
             ("drums", False, True, "solo / drums"), (None, None, None, "music / white noise"))


def embedder_check(corpus, embedders, n=48, seconds=4.0, seed=0):
    """What each embedder hears, on real clips: for each contrast (bass/flute, slow/fast,
    drums/solo) and for music against white noise, FAD between two sets of n clips that differ
    in it, beside FAD between two disjoint sets that do not. [(contrast, {FAD_name: (between, within)})]"""
    entries = [e for e in read_manifest(os.path.join(corpus, "manifest.jsonl")) if isinstance(e.get("attributes"), dict)]
    rng = np.random.default_rng(seed)
    draw = lambda keep, k: [entries[i]["audio"] for i in rng.permutation(len(entries)) if keep(entries[i]["attributes"])][:k]
    mels = lambda paths: log_mels(load_ground_truth(paths, seconds), 16000)
    rows = []
    for attribute, a, b, label in CONTRASTS:
        sets = draw(lambda e: attribute is None or e.get(attribute) == a, 2 * n)
        other = draw(lambda e: e.get(attribute) == b, n) if attribute else []
        if len(sets) < 4 or (attribute and len(other) < 2):
            continue
        half = len(sets) // 2
        x, y = mels(sets[:half]), mels(sets[half:])
        z = mels(other) if attribute else log_mels(rng.normal(scale=0.1, size=(half, int(seconds * 16000))), 16000)
        rows.append((label, {name: (fad(embed(x), embed(z)), fad(embed(x), embed(y))) for name, embed in embedders.items()}))
    return rows


def stage_mels(spec, x, window):
    """A stage's output [N x C x T] as log-mels [N x 80 x F] of its middle `window` seconds."""
    x = x.float().numpy()
    if spec.output == "spec":
        return middle(x, MEL_FPS, window)
    return log_mels(middle(x[:, 0], spec.sample_rate, window), spec.sample_rate)


# ----------------------------------------------------------------------------------------------
# Plots without a plotting package: a tiny RGB rasterizer with a 5x7 pixel font, PNG via zlib

_FONT = {  # 5x7 glyphs, one 5-bit row per entry, top row first (the classic HD44780 shapes)
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12), "A": (14, 17, 17, 17, 31, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31),
    "F": (31, 16, 16, 30, 16, 16, 16), "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17),
    "L": (16, 16, 16, 16, 16, 16, 31), "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13),
    "R": (30, 17, 17, 30, 20, 18, 17), "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10),
    "X": (17, 17, 10, 4, 10, 17, 17), "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    ".": (0, 0, 0, 0, 0, 12, 12), "-": (0, 0, 0, 31, 0, 0, 0), ",": (0, 0, 0, 0, 12, 4, 8),
    "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8), ":": (0, 12, 12, 0, 12, 12, 0),
    "/": (0, 1, 2, 4, 8, 16, 0), "=": (0, 0, 31, 0, 31, 0, 0), "+": (0, 4, 4, 31, 4, 4, 0),
    "%": (24, 25, 2, 4, 8, 19, 3), "_": (0, 0, 0, 0, 0, 0, 31), "<": (2, 4, 8, 16, 8, 4, 2),
    ">": (8, 4, 2, 1, 2, 4, 8), " ": (0,) * 7, "?": (14, 17, 1, 2, 4, 0, 4), ";": (0, 12, 12, 0, 12, 4, 8),
}
BLACK, GREY, LIGHT, BLUE = (0, 0, 0), (128, 128, 128), (225, 225, 225), (31, 119, 180)


class Canvas:
    """An RGB image [H x W x 3] uint8 with lines, dots and text; `save` writes a PNG."""

    def __init__(self, width, height):
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)

    def dot(self, x, y, r, color):
        H, W = self.pixels.shape[:2]
        x, y = int(round(x)), int(round(y))
        self.pixels[max(0, y - r):min(H, y + r + 1), max(0, x - r):min(W, x + r + 1)] = color

    def line(self, x0, y0, x1, y1, color, width=1, dash=0):
        """A line `width` pixels thick; dash > 0 draws dash pixels on, dash pixels off."""
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(n):
            if dash and (i // dash) % 2:
                continue
            f = i / max(1, n - 1)
            self.dot(x0 + f * (x1 - x0), y0 + f * (y1 - y0), width // 2, color)

    def text(self, x, y, s, color=BLACK, scale=1, align="left"):
        """Upper-cased text with its top at y; x is its left edge, centre or right edge."""
        s = s.upper()
        width = 6 * scale * len(s) - scale
        x = x - (width // 2 if align == "center" else width if align == "right" else 0)
        for k, ch in enumerate(s):
            for row, bits in enumerate(_FONT.get(ch, _FONT["?"])):
                for col in range(5):
                    if bits >> (4 - col) & 1:
                        px, py = x + 6 * scale * k + col * scale, y + row * scale
                        self.pixels[max(0, py):py + scale, max(0, px):px + scale] = color

    def save(self, path):
        import struct
        import zlib
        h, w = self.pixels.shape[:2]
        raw = b"".join(b"\x00" + self.pixels[r].tobytes() for r in range(h))

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@dataclass
class Panel:
    """One line plot: points (xs, ys) with tick labels, and an optional dashed reference line."""
    title: str
    ylabel: str
    xs: list
    ys: list
    xlabels: list
    ref: float = None           # the ground truth's value, drawn dashed
    notes: list = None          # a small label above each point (e.g. step counts)


def _fmt(v):
    """A tick label of at most ~5 characters."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def draw_panel(canvas, panel, x0, y0, w, h):
    """Draw `panel` in the box (x0, y0, w, h): title above, y ticks left, x ticks below.

    The y range is the data's, so that small differences stay visible: the reference value is
    written under the title, and drawn as a dashed line only when it falls inside the range.
    """
    left, right, top, bottom = x0 + 52, x0 + w - 14, y0 + 34, y0 + h - 30
    canvas.text(x0 + w // 2, y0 + 4, panel.title, scale=2, align="center")
    subtitle = panel.ylabel + ("" if panel.ref is None else f"; GT {_fmt(panel.ref)}")
    canvas.text(x0 + w // 2, y0 + 22, subtitle, GREY, align="center")
    lo, hi = min(panel.ys), max(panel.ys)
    pad = 0.1 * (hi - lo) if hi > lo else max(abs(hi), 1e-3) * 0.1
    lo, hi = lo - pad, hi + pad
    xlo, xhi = min(panel.xs), max(panel.xs)
    X = lambda x: left + 10 + (x - xlo) / (xhi - xlo) * (right - left - 20) if xhi > xlo else (left + right) / 2
    Y = lambda y: bottom - (y - lo) / (hi - lo) * (bottom - top)
    for v in (lo + pad, (lo + hi) / 2, hi - pad):                       # y grid and ticks
        canvas.line(left, Y(v), right, Y(v), LIGHT)
        canvas.text(left - 4, int(Y(v)) - 3, _fmt(v), align="right")
    canvas.line(left, top, left, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    if panel.ref is not None and lo <= panel.ref <= hi:
        canvas.line(left, Y(panel.ref), right, Y(panel.ref), GREY, width=2, dash=5)
    points = [(X(x), Y(y)) for x, y in zip(panel.xs, panel.ys)]
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        canvas.line(xa, ya, xb, yb, BLUE, width=2)
    last_edge = -1e9
    for k, (x, y) in sorted(enumerate(points), key=lambda kp: kp[1][0]):
        canvas.dot(x, y, 3, BLUE)
        half = 3 * len(panel.xlabels[k])
        if x - half > last_edge + 4:                                     # skip x labels that would overlap
            canvas.text(int(x), bottom + 6, panel.xlabels[k], align="center")
            last_edge = x + half
        if panel.notes:
            canvas.text(int(x), int(y) - 13, str(panel.notes[k]), GREY, align="center")


def plot_panels(path, title, panels, cols, footer="", size=(330, 230)):
    """Panels in a grid of `cols` columns under a title; written as an RGB PNG."""
    rows = math.ceil(len(panels) / cols)
    w, h = size
    canvas = Canvas(cols * w, rows * h + 56)
    canvas.text(cols * w // 2, 8, title, scale=2, align="center")
    for k, panel in enumerate(panels):
        draw_panel(canvas, panel, (k % cols) * w, 30 + (k // cols) * h, w, h)
    canvas.line(12, rows * h + 42, 40, rows * h + 42, GREY, width=2, dash=5)
    canvas.text(46, rows * h + 39, "GT: ground truth, another real clip that fits the prompt (dashed where in range)" + footer)
    canvas.save(path)


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
    seconds: float = field(default=0.0, metadata={"help": "generated length in s (0: the checkpoints' clip length)"})
    steps: int = field(default=0, metadata={"help": "steps of every stage (0: each stage's default)"})
    batch: int = field(default=8, metadata={"help": "prompts generated together"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt draw and the noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    out: str = field(default="results", metadata={"help": "output folder (results.md, results.json)"})


SYSTEMS = (("Noise2Music Waveform", "wave", False), ("Noise2Music Spectrogram", "spec", False),
           ("Untrained Waveform", "wave", True), ("Untrained Spectrogram", "spec", True))


def check_config(cfg):
    """Flags argparse cannot check, and the files they name; fills the MuLan default."""
    if cfg.n < 2 or cfg.refs < 2 or cfg.batch < 1 or cfg.threads < 1 or cfg.steps < 0 or cfg.seconds < 0:
        raise UsageError("need --n >= 2, --refs >= 2, --batch >= 1, --threads >= 1, --steps >= 0, --seconds >= 0")
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
    import torch

    import cascade
    torch.set_num_threads(cfg.threads)
    es = eval_set(cfg.corpus, cfg.n, cfg.refs, cfg.seed)
    embedders = load_embedders(cfg.mulan)
    seconds = cfg.seconds or cascade.stage_spec("wave-generator", "toy").clip_seconds
    window = min(EVAL_SECONDS, seconds)
    gt = load_ground_truth([p for clips in es.clips for p in clips], window)
    text_emb = embedders["MuLan"].text(es.prompts)
    return es, embedders, seconds, window, text_emb, gt.reshape(cfg.n, cfg.refs + 1, -1)


def run_results(cfg: ResultsConfig):
    """Generate N clips per system at 16 kHz, score them, write OUT/results.md and results.json."""
    import cascade
    t0 = time.time()
    es, embedders, seconds, window, text_emb, gt = prepare(check_config(cfg))
    ref = build_reference(embedders, text_emb, log_mels(gt.reshape(-1, gt.shape[-1]), 16000).reshape(
        cfg.n, cfg.refs + 1, 80, -1))
    rows = {"Ground truth audio": ground_truth_scores(ref, np.random.default_rng(cfg.seed))}
    check = embedder_check(cfg.corpus, embedders, seconds=window, seed=cfg.seed)
    steps = {}
    for name, pipeline, untrained in SYSTEMS:
        models, text_encoder = load_pipeline(cfg.ckpt_dir, pipeline, cfg.device, cfg.seed + 1000 if untrained else None)
        knobs = default_knobs(cfg.steps)
        first = generate_first(models, text_encoder, es.prompts, pipeline, seconds, knobs, cfg.seed, cfg.batch)
        second = generate_second(models, text_encoder, es.prompts, pipeline, seconds, knobs, first, cfg.batch)
        spec = models[cascade.PIPELINES[pipeline][1]].spec
        rows[name] = {**score(embedders, stage_mels(spec, second.x, window), ref),
                      "seconds_per_clip": (first.seconds + second.seconds) / cfg.n}
        if not untrained:
            steps.update({s: {"trained_steps": m.step, "sampling_steps": knobs[s].steps or m.spec.steps,
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
# `ablations`: Figures 2 and 3 (sections 4.5, 4.6) at toy scale

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
    return knob.steps or spec.steps, knob.schedule or spec.step_schedule, spec.w if knob.w is None else knob.w


def run_ablations(cfg: AblationConfig):
    """Every stage's sweep, scored; writes OUT/ablations.md, ablations.json and three PNGs."""
    import cascade
    from data import fft_resample
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
        for metric, label in (("FAD_MFCC", "FAD MFCC (LOWER: BETTER)"), ("sim_text", "MULAN AUDIO-TEXT (HIGHER)")):
            for stage in stages:
                rs = [r for r in records if r["stage"] == stage and r["knob"] == knob]
                if knob == "steps":
                    xs = [r["seconds_per_clip"] for r in rs]
                    xlabels, notes = [f"{x:.2g}S" for x in xs], [r["steps"] for r in rs]
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
    import data
    rows = []
    for path in files:
        try:
            wave, rate = data.decode_audio(path)
        except data.AudioError as e:
            raise UsageError(f"{path}: {e}") from None
        wave = middle(data.fft_resample(wave.astype(np.float64), rate, 16000), 16000, seconds)
        if len(wave) < 320:
            raise UsageError(f"{path}: shorter than 20 ms")
        emb = embed(log_mels(wave[None], 16000))
        rows.append(emb.reshape(-1, emb.shape[-1]))
    return np.concatenate(rows)


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser():
    from data import OneLineParser, add_dataclass_flags as add_fields
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
    add_fields(sub.add_parser("results", help="Tables 5 and 6 for both pipelines (results.md)", description=(
        "Generate one clip per held-out prompt with each pipeline, and with untrained U-Nets, at 16 kHz; "
        "write FAD (MFCC, MuLan) and MuLan similarity tables beside the ground-truth and shuffled baselines.")),
        ResultsConfig)
    add_fields(sub.add_parser("ablations", help="CFG scale, step schedule and step count sweeps (ablations.md, PNGs)",
                              description=("Vary one inference knob of one stage at a time (CFG w in 1, 2, 5, 10, 15; "
                                           "back-heavy, uniform, front-heavy schedules; steps x0.25 to x2) and plot FAD "
                                           "and MuLan similarity, as Figures 2 and 3.")), AblationConfig)
    return parser


def run_fad(args):
    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
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
        try:
            m = analyze(path)
        except Exception as e:  # an unreadable file is the user's input, not a bug
            raise UsageError(f"{path}: {str(e).splitlines()[0]}") from None
        print(f"{path}: {m['seconds']:.2f} s @ {m['sample_rate']} Hz  "
              f"onsets {m['onset_rate']:.2f}/s  pitch {m['median_pitch']:.1f} ({m['note']})  "
              f"percussive {m['percussive_ratio']:.3f}")


def main(argv=None):
    """Entry point; a user's mistake exits 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        if args.command == "analyze":
            return run_analyze(args)
        if args.command == "fad":
            return run_fad(args)
        if args.command == "results":
            return run_results(ResultsConfig(**fields))
        return run_ablations(AblationConfig(**fields))
    except (UsageError, OSError) as e:
        parser.exit(2, f"evaluate.py {args.command}: error: {(str(e).splitlines() or [''])[0]}\n")


if __name__ == "__main__":
    main()
