"""Data for Noise2Music: audio, spectrograms, manifests, text batches and augmentations.

Where each piece of the paper (Huang et al., 2023) lives:
- section 3.3.1, FFT up-sampling of the low-fidelity audio -> `fft_resample`;
- section 3.3.2, the 80-channel, 100 frames-per-second log-mel spectrogram in [-1, 1] -> `log_mel`;
- section 3.6, non-overlapping 30 s clips cut from each track -> `load_clips` (in memory), or
  `python data.py prepare` and store.StoreClips (a prepared folder, read clip by clip);
- section 4.1, the text batch of each clip (three long captions, plus short tags and metadata cut
  into chunks of the stage's token length; one entry drawn per example) -> `text_entries`,
  `draw_text`; random 3-4 s crops -> `draw_crop_length`, `random_crop`; conditioning augmentation
  (diffusion noise at t ~ U[0, t_max], Gaussian blur) -> `noise_augment`, `blur_1d`, `blur_2d`,
  `Augmentation`, `augment_conditioning`.
The toy corpus of synthesized folk tunes (`python data.py toy`) lives in `toy_corpus.py`.

Stage sample rates (Table 2 and section 3.6): the wave generator works at 3.2 kHz, the cascader,
the spectrogram and the vocoder at 16 kHz, the super-resolution cascader at 24 kHz.

Manifest format (JSON Lines, one clip or track per line):
- `audio` (required): path of the audio file, relative to the manifest's folder (absolute paths
  work too). Any format and rate that soundfile reads; `read_manifest` resolves it.
- `captions` (list of str, may be empty or absent): long-form sentences (LaMDA-LF-like).
- `tags` (list of str, optional): short-form tags (Rater-SF-like).
- `metadata` (dict, optional): named-entity tags of section 3.6: `title`, `composer`, `form`,
  `region`, `key`, `source` (any subset). A top-level `title` string is accepted too.
- `attributes` (dict, optional, not used as text): the TRUE attributes of a toy clip, for
  measuring prompt adherence: `tempo` ("slow", "fast" or null), `bpm`, `instrument`,
  `register` ("low", "middle", "high"), `note_range` ([lowest, highest] MIDI note of the tune),
  `mode` ("major" or "minor"), `key`, `drums` (bool), `chords` (bool), `tune`, `seconds`.
- `pseudo_captions`, `pseudo_tags` (lists of str, optional): pseudo labels (section 3.5), written
  by pseudolabel.py; `text_entries` uses them like `captions` and `tags`.
Fields added by `load_clips` to each clip's entry: `clip_index`, `clip_start` (seconds).
"""
import argparse
import hashlib
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import diffusion
import toy_corpus

# Sample rates of the cascade's stages (Table 2, section 3.6).
STAGE_SAMPLE_RATES = {
    "wave-generator": 3200,
    "cascader": 16000,
    "spec-generator": 16000,
    "vocoder": 16000,
    "super-res": 24000,
}
CLIP_SECONDS = 30.0  # section 3.6: non-overlapping 30 s clips


# ----------------------------------------------------------------------------------------------
# FFT resampling (section 3.3.1)

def fft_resample(x, orig_sr, new_sr):
    """Resample along the last axis by zero-padding or truncating the spectrum (section 3.3.1).

    The clip is treated as one period of a periodic signal, so resample whole clips and crop
    afterwards (a crop taken first would wrap its end onto its start). The output has `T * new_sr // orig_sr` samples (floor). The
    Nyquist bin of an even-length spectrum is split in two when up-sampling and folded back when
    down-sampling, exactly as scipy.signal.resample does, so the two agree to rounding error.

    :param x: a float numpy array or torch tensor [... x T]; leading dims are batch dims.
    :param orig_sr: the sample rate of x (int, Hz).
    :param new_sr: the wanted sample rate (int, Hz).
    :return: [... x T * new_sr // orig_sr], of x's type and dtype.
    """
    if orig_sr == new_sr:
        return x
    is_numpy = isinstance(x, np.ndarray)
    xt = torch.from_numpy(x) if is_numpy else x
    n_x = xt.shape[-1]
    num = n_x * int(new_sr) // int(orig_sr)
    m = min(num, n_x)  # number of frequency bins kept, counted two-sided
    spec = torch.fft.rfft(xt, dim=-1)[..., : m // 2 + 1]
    if m % 2 == 0 and num != n_x:
        # The bin at m/2 stands for both +m/2 and -m/2: double it when it becomes the new Nyquist
        # bin (down-sampling), halve it when it becomes a +/- pair (up-sampling).
        spec = spec.clone()
        spec[..., m // 2] *= 2.0 if num < n_x else 0.5
    y = torch.fft.irfft(spec, n=num, dim=-1) * (num / n_x)
    return y.numpy() if is_numpy else y


# ----------------------------------------------------------------------------------------------
# Log-mel spectrogram (section 3.3.2)
#
# The paper fixes 80 channels, 100 frames per second and values in [-1, 1]; the rest is ours:
# - 16 kHz input, hop 160 samples (10 ms): the vocoder's strides 2*4*4*5 = 160 map one frame to
#   160 samples;
# - periodic Hann window of 640 samples (40 ms), zero-padded to a 1024-point FFT, divided by the
#   window's sum so that a sine of amplitude A peaks at A/2 in its bin;
# - power spectrum through 80 HTK-mel triangles (mel = 2595 log10(1 + f/700)) from 0 to 8 kHz,
#   each a triangle of peak 1, linear in Hz between its neighbours' centres (librosa's
#   `mel(htk=True, norm=None)` layout);
# - 10 log10 with a floor of 1e-10 (-100 dB), then the fixed map [-100 dB, +20 dB] -> [-1, 1]
#   (`normalize_db`), clipped; `denormalize_db` inverts it.
# Framing: the wave is reflect-padded by (1024 - 160) / 2 = 432 samples on each side (zeros for
# clips shorter than that), so frame i is centred on sample 160 i + 80, the middle of its hop, and
# T samples give T // 160 frames: frames * 160 == T exactly when T is a multiple of 160.

MEL_SAMPLE_RATE = 16000
MEL_BINS = 80
MEL_FPS = 100
MEL_HOP = MEL_SAMPLE_RATE // MEL_FPS  # 160 samples
MEL_WIN = 640
MEL_NFFT = 1024
MEL_FMIN = 0.0
MEL_FMAX = 8000.0
DB_MIN = -100.0  # the log floor: 10 log10(1e-10)
DB_MAX = 20.0


def hz_to_mel(f):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels=MEL_BINS, n_fft=MEL_NFFT, sample_rate=MEL_SAMPLE_RATE,
                   fmin=MEL_FMIN, fmax=MEL_FMAX):
    """Triangular HTK-mel filters of peak 1: an [n_mels x n_fft // 2 + 1] float64 array."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs - lower) / (centre - lower)
    falling = (upper - fft_freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


_MEL_CACHE = {}


def _mel_constants(dtype, device="cpu"):
    """Window, filterbank and the filterbank's pseudo-inverse as tensors of `dtype` on `device`,
    built once for each (the pseudo-inverse of the `dtype` filterbank, in float64 on the CPU)."""
    key = (dtype, torch.device(device))
    if key not in _MEL_CACHE:
        window = torch.hann_window(MEL_WIN, periodic=True, dtype=torch.float64).to(dtype)
        fbank = torch.from_numpy(mel_filterbank()).to(dtype)
        pinv = torch.linalg.pinv(fbank.double()).to(dtype)
        _MEL_CACHE[key] = tuple(c.to(device) for c in (window, fbank, pinv))
    return _MEL_CACHE[key]


def mel_spectrogram(wave):
    """Power mel spectrogram of 16 kHz audio: [... x T] tensor -> [... x 80 x T // 160]."""
    if wave.shape[-1] < MEL_HOP:
        raise ValueError(f"need at least {MEL_HOP} samples for one frame, got {wave.shape[-1]}")
    window, fbank, _ = _mel_constants(wave.dtype, wave.device)
    lead = wave.shape[:-1]
    x = wave.reshape(-1, 1, wave.shape[-1])  # (N, 1, T)
    pad = (MEL_NFFT - MEL_HOP) // 2
    mode = "reflect" if x.shape[-1] > pad else "constant"
    x = torch.nn.functional.pad(x, (pad, pad), mode=mode)[:, 0]  # (N, T + 864)
    spec = torch.stft(x, MEL_NFFT, hop_length=MEL_HOP, win_length=MEL_WIN, window=window,
                      center=False, return_complex=True)  # (N, 513, frames)
    power = (spec.abs() / window.sum()) ** 2
    mel = torch.matmul(fbank, power)  # (N, 80, frames)
    return mel.reshape(*lead, MEL_BINS, mel.shape[-1])


def mel_to_db(mel):
    """Power -> decibels, floored at DB_MIN: 10 log10(max(mel, 1e-10))."""
    return 10.0 * torch.log10(torch.clamp(mel, min=10.0 ** (DB_MIN / 10.0)))


def db_to_mel(db):
    """Decibels -> power, the inverse of `mel_to_db` above the floor."""
    return 10.0 ** (db / 10.0)


def normalize_db(db):
    """The fixed map [DB_MIN, DB_MAX] -> [-1, 1], clipped: the spectrogram model's pixel values."""
    return torch.clamp(2.0 * (db - DB_MIN) / (DB_MAX - DB_MIN) - 1.0, -1.0, 1.0)


def denormalize_db(x):
    """The inverse of `normalize_db`: [-1, 1] -> [DB_MIN, DB_MAX] decibels."""
    return DB_MIN + (x + 1.0) * 0.5 * (DB_MAX - DB_MIN)


def log_mel(wave, sample_rate=MEL_SAMPLE_RATE):
    """The spectrogram of section 3.3.2: [... x T] -> [... x 80 x frames], values in [-1, 1].

    Audio at another rate is first brought to 16 kHz with `fft_resample`; frames = T16 // 160
    for T16 samples at 16 kHz (see the notes above `MEL_SAMPLE_RATE`).

    :param wave: a float numpy array or torch tensor [... x T].
    :param sample_rate: the rate of `wave` in Hz.
    :return: the normalized log-mel spectrogram, of wave's type.
    """
    is_numpy = isinstance(wave, np.ndarray)
    x = torch.from_numpy(wave) if is_numpy else wave
    x = fft_resample(x, sample_rate, MEL_SAMPLE_RATE)
    spec = normalize_db(mel_to_db(mel_spectrogram(x)))
    return spec.numpy() if is_numpy else spec


def mel_magnitude(spec):
    """The STFT magnitude a normalized log-mel implies: [... x 80 x F] -> [... x 513 x F + 1].

    The mel power goes back to an STFT power by the filterbank's pseudo-inverse (clamped at 0),
    scaled as `mel_spectrogram` measures it; frame f is centred on sample 160 f + 80 of the audio
    (`log_mel`'s frames), plus one frame centred at the end, for `torch.istft`.
    """
    window, _, pinv = _mel_constants(spec.dtype, spec.device)
    power = torch.clamp(pinv @ db_to_mel(denormalize_db(spec)), min=0.0)   # (..., 513, F)
    return torch.nn.functional.pad(power.sqrt() * window.sum(), (0, 1))


def _with_magnitude(wave, magnitude, stft=None):
    """`wave` [N x T] (frames centred on 160 f) with its STFT magnitude replaced, its phase kept
    (`stft`: the wave's, where the caller has it already)."""
    stft = _stft(wave) if stft is None else stft
    return _istft(magnitude * stft / stft.abs().clamp(min=1e-8), wave.shape[-1])


def project_to_mel(wave, spec, magnitude=None, fit=0):
    """`wave` with the STFT magnitude of the log-mel `spec` and its own phase: one Griffin-Lim round.

    wave [... x F * 160] at 16 kHz, spec [... x 80 x F]. The vocoder's sampler can apply it to
    each step's estimate of x_0 (cascade.mel_projection; GLA-Grad, Liu et al. 2024),
    passing `magnitude` = mel_magnitude(spec), computed once for all the steps.
    With `fit` > 0 the magnitude is instead the wave's own, fitted to the log-mel (`fit_to_mel`).
    """
    lead, T = wave.shape[:-1], wave.shape[-1]
    shifted = torch.nn.functional.pad(wave.reshape(-1, T)[:, MEL_HOP // 2:], (0, MEL_HOP // 2))
    if fit:
        stft = _stft(shifted)
        out = _with_magnitude(shifted, fit_to_mel(stft.abs(), spec.reshape(-1, MEL_BINS, spec.shape[-1]), fit), stft)
    else:
        magnitude = mel_magnitude(spec) if magnitude is None else magnitude
        magnitude = magnitude.reshape(-1, MEL_NFFT // 2 + 1, spec.shape[-1] + 1)
        out = _with_magnitude(shifted, magnitude.to(wave.dtype))
    return torch.nn.functional.pad(out, (MEL_HOP // 2, 0))[:, :T].reshape(*lead, T)


def fit_to_mel(magnitude, spec, rounds):
    """An STFT magnitude [N x 513 x F + 1] moved, by `rounds` Richardson-Lucy rounds, towards one whose
    mel spectrogram is the log-mel `spec` [N x 80 x F] (frames as `mel_magnitude`'s).

    Each round multiplies every bin's power by the filterbank-weighted mean, over the mel bands it
    falls in, of (the band's power in `spec`) / (its power now): the EM step for non-negative power
    seen through the filterbank (Richardson 1972, Lucy 1974). Unlike `mel_magnitude`, which spreads a
    band's power evenly over its bins, it keeps the detail within each band that `magnitude` has:
    a partial stays a line and the bins between partials stay low. A band at the log floor (-100 dB,
    `DB_MIN`) is taken to hold nothing rather than exactly the floor's power: the log-mel cannot tell
    the floor from silence, and spread over a wide band the floor's power is a hiss 85-90 dB under
    a clip's peaks where real clips have none. A bin outside every band (DC) holds nothing, as in
    `mel_magnitude`, whose pseudo-inverse row for it is zero.
    """
    window, fbank, _ = _mel_constants(magnitude.dtype, magnitude.device)
    scale = window.sum()
    target = (db_to_mel(denormalize_db(spec)) - db_to_mel(DB_MIN)).clamp(min=0.0)
    target = torch.nn.functional.pad(target, (0, 1))               # mel_magnitude's extra end frame
    cover = fbank.sum(0)[:, None]
    tiny = torch.finfo(magnitude.dtype).tiny
    power = (magnitude / scale) ** 2 + tiny
    for _ in range(rounds):
        power = power * (fbank.T @ (target / (fbank @ power + tiny))) / cover.clamp(min=tiny)
    return power.sqrt() * scale * (cover > 0)


def _stft(wave):
    window = _mel_constants(wave.dtype, wave.device)[0]
    return torch.stft(wave, MEL_NFFT, MEL_HOP, MEL_WIN, window, center=True, return_complex=True)


def _istft(stft, length):
    window = _mel_constants(stft.real.dtype, stft.device)[0]
    return torch.istft(stft, MEL_NFFT, MEL_HOP, MEL_WIN, window, center=True, length=length)


def griffin_lim(spec, iters=8):
    """Audio from a normalized log-mel by Griffin-Lim: [... x 80 x F] -> [... x F * 160] at 16 kHz.

    The inverse of `log_mel` up to phase: `mel_magnitude`, then `iters` rounds of Griffin & Lim
    (1984) find a phase consistent with it, from zero phase (deterministic). Frames are aligned
    with `log_mel`'s (each centred 80 samples after its hop). bench/adherence.py uses it to hear
    the spectrogram generator's output apart from the vocoder: rendered from real clips' log-mels,
    pairs keep their register and drums order as the clips do (100%), their tempo order 80% of
    the time.
    """
    window = _mel_constants(spec.dtype, spec.device)[0]
    lead, frames = spec.shape[:-2], spec.shape[-1]
    magnitude = mel_magnitude(spec)
    magnitude = magnitude.reshape(-1, *magnitude.shape[-2:])
    length = frames * MEL_HOP
    stft = magnitude.to(torch.complex64 if spec.dtype != torch.float64 else torch.complex128)
    wave = torch.istft(stft, MEL_NFFT, MEL_HOP, MEL_WIN, window, center=True, length=length)
    for _ in range(iters):           # keep the magnitude, take the phase of the audio made so far
        wave = _with_magnitude(wave, magnitude)
    wave = torch.nn.functional.pad(wave, (MEL_HOP // 2, 0))[..., :length]   # log_mel's frame f: centre 160 f + 80
    return wave.reshape(*lead, length)


# ----------------------------------------------------------------------------------------------
# Manifests

class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and the line."""


class StoreError(ValueError):
    """A prepared folder (store.py) that cannot be used or resumed; the message says why."""


def read_manifest(path):
    """Read a JSON Lines manifest; resolve each `audio` to an absolute path.

    Blank lines are skipped. A line that is not a JSON object, lacks a string `audio`, or has
    `captions` that is not a list raises ManifestError naming the file and line number.

    :return: a list of dicts, one per line, with `captions` defaulting to [].
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from None
    root = os.path.dirname(os.path.abspath(path))
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str):
            raise ManifestError(f'{path}:{number}: expected an object with an "audio" path')
        entry.setdefault("captions", [])
        _check_entry_types(entry, f"{path}:{number}")
        entry["audio"] = os.path.normpath(os.path.join(root, entry["audio"]))
        entries.append(entry)
    return entries


TEXT_LISTS = ("captions", "tags", "pseudo_captions", "pseudo_tags")    # lists of strings


def _check_entry_types(entry, where):
    """ManifestError unless the text fields are lists of strings (a bare string would be read letter
    by letter) and `metadata` / `attributes` are objects."""
    for key in TEXT_LISTS:
        value = entry.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise ManifestError(f'{where}: "{key}" must be a list of strings')
    for key in ("metadata", "attributes"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise ManifestError(f'{where}: "{key}" must be an object')


def write_manifest(path, entries):
    """Write entries as JSON Lines; absolute `audio` paths are made relative to path's folder."""
    root = os.path.dirname(os.path.abspath(path))
    with open(path, "w", encoding="utf-8") as f:
        for entry in entries:
            entry = dict(entry)
            if os.path.isabs(entry["audio"]):
                entry["audio"] = os.path.relpath(entry["audio"], root)
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Real audio: decode, mix to mono, resample, cut into clips (section 3.6)

SILENCE_PEAK = 1e-4  # a file whose samples all stay below -80 dBFS counts as silent


class AudioError(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


def not_a_file(path):
    """Why `path` cannot be read as audio before opening it ("missing file", a folder), or None."""
    if os.path.isdir(path):
        return "a folder, not an audio file"
    return None if os.path.exists(path) else "missing file"


def decode_audio(path, channels=1):
    """Read any file soundfile reads: (float32 audio, sample rate); raise AudioError.

    channels=1: the mix-down, the mean of the file's channels, [T] (every stage of the paper);
    channels=2: [2 x T] left and right (a stereo stage): a mono file's channel twice, a file of more
    channels its first two.
    """
    problem = not_a_file(path)
    if problem:
        raise AudioError(problem)
    if os.path.getsize(path) == 0:
        raise AudioError("empty file")
    try:
        log = sf.info(path).extra_info
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # (T, channels)
    except Exception as e:  # libsndfile's own errors name the problem; anything else, too
        message = str(e).splitlines()[0].replace(f"'{path}'", "file")[:120]
        raise AudioError(f"not readable audio ({message})") from None
    if data.shape[0] == 0:
        raise AudioError("no samples")
    # libsndfile reads a cut-off WAV/AIFF silently, but its log says "data : N (should be M)".
    # A header size of 0 or 0xFFFFFFFF is a streamed file's placeholder, not a truncation.
    for declared, actual in re.findall(r"(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", log):
        if 0 < int(actual) < int(declared) < 0xFFFFFFFF:
            raise AudioError(f"truncated ({actual} of {declared} data bytes)")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError("NaN or infinite samples")
    if np.abs(mono).max() < SILENCE_PEAK:
        raise AudioError("silent")
    if channels == 2:
        return np.ascontiguousarray(data[:, [0, min(1, data.shape[1] - 1)]].T), rate
    return mono, rate


def _cache_path(cache_dir, path, sample_rate, channels=1):
    """Cache file for a decoded track, keyed by path, size, mtime, rate (and channels, if not mono)."""
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{sample_rate}" + (f"|{channels}" if channels != 1 else "")
    return os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest() + ".npy")


def load_track(path, sample_rate, cache_dir=None, channels=1):
    """A whole track as float32 at `sample_rate` (FFT-resampled whole), mono [T] or [2 x T] (see
    decode_audio); raise AudioError (also for a track shorter than one 10 ms spectrogram hop, which
    no stage can use)."""
    use_cache = cache_dir and os.path.exists(path)
    cached = _cache_path(cache_dir, path, sample_rate, channels) if use_cache else None
    if cached and os.path.exists(cached):
        return np.load(cached)
    wave = resample_track(*decode_audio(path, channels), sample_rate)
    if cached:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cached + f".{os.getpid()}.tmp.npy"
        np.save(tmp, wave)
        os.replace(tmp, cached)
    return wave


def resample_track(mono, rate, sample_rate):
    """A decoded track [... x T] FFT-resampled whole to `sample_rate` (float32); AudioError for a
    track shorter than one 10 ms spectrogram hop, which no stage can use."""
    wave = fft_resample(np.asarray(mono, dtype=np.float64), rate, sample_rate).astype(np.float32)
    shortest = -(-sample_rate // MEL_FPS)         # one 10 ms log-mel hop: less makes no frame
    if wave.shape[-1] < shortest:
        raise AudioError(f"too short ({wave.shape[-1]} samples at {sample_rate} Hz; at least {shortest})")
    return wave


def split_clips(wave, sample_rate, clip_seconds=CLIP_SECONDS):
    """Non-overlapping clips of clip_seconds (section 3.6).

    A track no longer than one clip is kept whole; from a longer one the remainder shorter than a
    clip is dropped (a 70 s track gives two 30 s clips).
    """
    n = int(round(clip_seconds * sample_rate))
    if wave.shape[-1] <= n:
        return [wave]
    return [wave[..., k * n:(k + 1) * n] for k in range(wave.shape[-1] // n)]


def load_clips(entries, sample_rate, clip_seconds=CLIP_SECONDS, cache_dir=None, progress=True, channels=1):
    """Decode, mix down (unless channels=2: left and right), resample and cut every manifest entry's audio.

    A file that is missing, empty, truncated, not audio, holds NaN/inf or is silent is skipped;
    each such file is reported once on stderr (path and reason) with a count at the end.

    :param entries: dicts from `read_manifest`.
    :param sample_rate: the stage's rate (STAGE_SAMPLE_RATES).
    :param cache_dir: where decoded and resampled tracks are cached as .npy (None: no cache).
    :param channels: 1 (mono, every stage of the paper) or 2 (a stereo stage: [2 x T] clips).
    :return: (clips, skipped): clips a list of (entry, float32 [T] wave) with `clip_index` and
        `clip_start` added to a copy of the entry; skipped a list of (path, reason).
    """

    clips, skipped = [], []
    for entry in tqdm(entries, desc=f"audio @ {sample_rate} Hz", disable=not progress,
                      leave=False):
        try:
            wave = load_track(entry["audio"], sample_rate, cache_dir, channels)
        except AudioError as e:
            skipped.append((entry["audio"], str(e)))
            continue
        for k, clip in enumerate(split_clips(wave, sample_rate, clip_seconds)):
            clips.append((dict(entry, clip_index=k, clip_start=k * clip_seconds), clip))
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} of {len(entries)} audio files", file=sys.stderr)
    return clips, skipped


# ----------------------------------------------------------------------------------------------
# Text batches (section 4.1)

METADATA_KEYS = ("title", "composer", "form", "region", "key", "source")


def short_texts(entry):
    """Short tags, pseudo tags, then metadata values (the named-entity tags of section 3.6)."""
    texts = list(entry.get("tags", [])) + list(entry.get("pseudo_tags", []))
    metadata = dict(entry.get("metadata") or {})
    if isinstance(entry.get("title"), str):
        metadata.setdefault("title", entry["title"])
    texts += [str(metadata[k]) for k in METADATA_KEYS if metadata.get(k)]
    return [t.strip() for t in texts if t and t.strip()]


def chunk_texts(texts, token_len, count_tokens=None):
    """Join short texts with ", " into chunks of at most token_len tokens (greedy, in order).

    A text longer than token_len on its own is split between words; a single word longer than
    token_len stays whole (the tokenizer truncates it).
    """
    count = count_tokens or (lambda s: len(s.split()))
    pieces = []
    for text in texts:
        if count(text) <= token_len:
            pieces.append(text)
            continue
        words, piece = text.split(), []
        for word in words:
            if piece and count(" ".join(piece + [word])) > token_len:
                pieces.append(" ".join(piece))
                piece = []
            piece.append(word)
        pieces.append(" ".join(piece))
    chunks, current = [], []
    for piece in pieces:
        if current and count(", ".join(current + [piece])) > token_len:
            chunks.append(", ".join(current))
            current = []
        current.append(piece)
    if current:
        chunks.append(", ".join(current))
    return chunks


def text_entries(entry, token_len, count_tokens=None):
    """The text batch of one clip (section 4.1).

    Each long caption (`captions`, then `pseudo_captions`) is one entry; the short tags, pseudo
    tags and metadata are concatenated and cut into chunks of token_len tokens as further
    entries. Tokens are counted by count_tokens(str) -> int when given, else as whitespace words.

    :return: a list of str; empty for a clip without text (it trains the unconditional path).
    """
    long = list(entry.get("captions", [])) + list(entry.get("pseudo_captions", []))
    long = [c.strip() for c in long if c and c.strip()]
    return long + chunk_texts(short_texts(entry), token_len, count_tokens)


def draw_text(entries, rng):
    """One entry of a text batch drawn uniformly; '' when there is none (unconditional).

    :param rng: a numpy Generator or a random.Random.
    """
    if not entries:
        return ""
    index = rng.integers(len(entries)) if hasattr(rng, "integers") else rng.randrange(len(entries))
    return entries[int(index)]


# ----------------------------------------------------------------------------------------------
# Crops (section 4.1: random 3-4 s windows for the cascader, vocoder and super-res)

def draw_crop_length(min_seconds, max_seconds, sample_rate, rng, multiple=1):
    """One crop length in samples for a whole batch, uniform in [min, max] seconds.

    Rounded down to a multiple of `multiple` (e.g. 160 so that a vocoder crop holds whole
    spectrogram frames). The paper's 3-4 s out of 30 s scale to 0.4-0.53 s for 4 s toy clips.
    """
    seconds = min_seconds + (max_seconds - min_seconds) * float(rng.random())
    return max(multiple, int(seconds * sample_rate) // multiple * multiple)


def random_crop(signals, length, rng, hops=None):
    """The same random window from several aligned signals (numpy arrays or tensors [... x T_i]).

    Signal i has one element per hops[i] samples of the base timeline (1 for audio at the base
    rate, 160 for 100 fps spectrogram frames of 16 kHz audio), so the vocoder gets matching
    audio and frames, and the cascader matching target and up-sampled conditioning. The start is
    a random multiple of every hop. Signals shorter than the window are zero-padded at the end.

    :param length: the window in base samples, a multiple of every hop.
    :return: a list of crops, one per signal, signal i of length length // hops[i].
    """
    hops = list(hops or [1] * len(signals))
    if any(length % h for h in hops):
        raise ValueError(f"crop length {length} is not a multiple of the hops {hops}")
    total = min(s.shape[-1] * h for s, h in zip(signals, hops))
    step = math.lcm(*hops)
    start = int(rng.integers(0, max(0, total - length) // step + 1)) * step
    crops = []
    for s, h in zip(signals, hops):
        crop = s[..., start // h:(start + length) // h]
        short = length // h - crop.shape[-1]
        if short > 0:
            crop = (np.pad(crop, [(0, 0)] * (crop.ndim - 1) + [(0, short)])
                    if isinstance(crop, np.ndarray)
                    else torch.nn.functional.pad(crop, (0, short)))
        crops.append(crop)
    return crops


# ----------------------------------------------------------------------------------------------
# Conditioning augmentation (section 4.1, after Ho et al. 2022, cascaded diffusion models)

@dataclass(frozen=True)
class Augmentation:
    """Augmentation of a cascader's conditioning input (section 4.1); each stage's is in cascade.PRESETS."""
    t_max: float            # diffusion-noise corruption at t ~ U[0, t_max]
    blur: str = ""          # "1d" (waveform), "2d" (spectrogram) or "" (none)
    sigma_range: tuple = (0.0, 0.0)  # Gaussian blur's standard deviation, drawn uniformly
    blur_size: int = 0      # the blur kernel's size (1-D taps, or the side of the 2-D square)


def gaussian_kernels(sigma, size):
    """Normalized Gaussian taps [B x size] for per-example sigma (B,).

    Offsets run from -(size // 2) to size - 1 - size // 2, so the tap at offset 0 is the sample
    itself: for the paper's even size 10 that is -5..4 (no half-sample shift; the window is one
    tap shorter on the right), for size 5 it is -2..2.
    """
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    taps = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return taps / taps.sum(dim=1, keepdim=True)


def _blur_last_axis(x, sigma, size):
    """Per-example Gaussian blur of [B x C x T] along T, with reflect padding."""
    b, c, t = x.shape
    kernels = gaussian_kernels(sigma.to(x.dtype), size)  # (B, size)
    weight = kernels.repeat_interleave(c, dim=0)[:, None, :]  # (B*C, 1, size)
    left = size // 2
    mode = "reflect" if t > left else "replicate"
    padded = torch.nn.functional.pad(x.reshape(1, b * c, t), (left, size - 1 - left), mode=mode)
    return torch.nn.functional.conv1d(padded, weight, groups=b * c).reshape(b, c, t)


def blur_1d(x, sigma, size=10):
    """1-D Gaussian blur of waveforms [B x C x T], sigma a (B,) tensor (cascader, section 4.1)."""
    return _blur_last_axis(x, sigma, size)


def blur_2d(spec, sigma, size=5):
    """2-D size x size Gaussian blur of spectrograms [B x 80 x F], sigma (B,) (vocoder, 4.1).

    The isotropic 2-D Gaussian is separable: blur along frames, then along mel channels.
    """
    x = _blur_last_axis(spec, sigma, size)  # along frames
    return _blur_last_axis(x.transpose(1, 2), sigma, size).transpose(1, 2)  # along mel bins


def random_blur_sigma(batch, sigma_range, generator=None):
    """Per-example blur sigma ~ U[sigma_range]: a (batch,) float32 tensor."""
    lo, hi = sigma_range
    return lo + (hi - lo) * torch.rand(batch, generator=generator)


def noise_augment(cond, t_max, schedule, generator=None):
    """Corrupt the conditioning with diffusion noise at t ~ U[0, t_max] per example (section 4.1).

    :param cond: the conditioning [B x ...] (up-sampled audio or spectrogram).
    :param schedule: the stage's noise schedule name, as in diffusion.SCHEDULES.
    :return: (q_sample(cond, t, eps, schedule), t), t a (B,) tensor.
    """
    t = t_max * torch.rand(cond.shape[0], generator=generator).to(cond.dtype)
    eps = torch.randn(cond.shape, generator=generator).to(cond.dtype)
    return diffusion.q_sample(cond, t, eps, schedule), t


def augment_conditioning(cond, augmentation, schedule, generator=None, clean_share=0.0):
    """Blur (when the stage has one, sigma drawn per example), then noise-corrupt the conditioning.

    The paper does not say whether both augmentations apply to every example; here both do, and
    the small end of each sigma range leaves the input nearly unchanged, except for a share
    `clean_share` of the examples, left untouched (t = 0). That share is 0 at full scale. It
    matters in short runs: audio at an RMS of 0.1 is drowned by the noise of t > ~0.05 of the
    linear schedule, so with every example corrupted at t ~ U[0, 0.5] only about a tenth of
    them teach the clean-input case that inference uses (the toy presets' share is 0.5, cascade.py).

    :return: (augmented cond, t) where t (B,) is the noise level, for the model to see
        (unet1d's aug_t).
    """
    original = cond
    if augmentation.blur:
        sigma = random_blur_sigma(cond.shape[0], augmentation.sigma_range, generator)
        blur = blur_1d if augmentation.blur == "1d" else blur_2d
        cond = blur(cond, sigma, augmentation.blur_size)
    cond, t = noise_augment(cond, augmentation.t_max, schedule, generator)
    if clean_share > 0:
        clean = torch.rand(cond.shape[0], generator=generator) < clean_share
        keep = clean.reshape((-1,) + (1,) * (cond.dim() - 1))
        cond, t = torch.where(keep, original, cond), torch.where(clean, torch.zeros_like(t), t)
    return cond, t


# ----------------------------------------------------------------------------------------------
# Command line

def _check_command(args):
    """`python data.py check MANIFEST`: read, decode and count clips; report skipped files."""
    entries = read_manifest(args.manifest)
    clips, skipped = load_clips(entries, args.sample_rate, args.clip_seconds, args.cache_dir)
    seconds = sum(len(w) for _, w in clips) / args.sample_rate
    print(f"{len(entries)} entries, {len(clips)} clips ({seconds / 3600:.2f} h at "
          f"{args.sample_rate} Hz), {len(skipped)} files skipped")


def _positive(kind):
    """argparse type: a positive, finite int or float."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive and finite: {text!r}")
        return value
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with bad input as one line on stderr and exit status 2 (argparse's own error prints the
    whole usage first). Every command line of the project uses it; its subcommands inherit it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def build_parser():
    """The command line: `toy` (synthesize the toy corpus), `tunes`, `check`, `prepare`."""
    parser = OneLineParser(
        prog="data.py", description="Noise2Music data: the toy corpus and real-audio manifests.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    toy_corpus.add_arguments(sub.add_parser(
        "toy", help="synthesize the toy corpus of captioned folk-tune clips",
        description=toy_corpus.CLI_DESCRIPTION))
    tunes = sub.add_parser("tunes", help="rebuild the parsed-tune asset from the music21 corpus")
    tunes.add_argument("--out", default=toy_corpus.TUNES_PATH, help="JSON file to write")
    check = sub.add_parser("check", help="read a manifest, decode its audio, report skipped files")
    check.add_argument("manifest", help="a JSON Lines manifest")
    check.add_argument("--sample-rate", type=_positive(int), default=16000)
    check.add_argument("--clip-seconds", type=_positive(float), default=CLIP_SECONDS)
    check.add_argument("--cache-dir", default=None, help="cache decoded, resampled tracks here")
    prep = sub.add_parser("prepare", help="decode and resample a collection once, for training in bounded memory",
                          description="Decode, mix down and FFT-resample every track of a manifest to the stage "
                          "rates, stored as arrays with an index (store.py); resumable, bad files skipped.")
    prep.add_argument("--manifest", required=True, help="a JSON Lines manifest")
    prep.add_argument("--out", required=True, metavar="DIR", help="the prepared folder (train.py --data DIR)")
    prep.add_argument("--rates", type=_rate_list, default=None,
                      help="comma-separated rates in Hz (default: every stage's, 3200,16000,24000)")
    prep.add_argument("--dtype", choices=("int16", "float32"), default="int16",
                      help="int16 (default: scaled per track, half the disk) or float32 (exact)")
    prep.add_argument("--workers", type=_positive(int), default=1, help="decoding processes (default 1)")
    prep.add_argument("--shard-tracks", type=_positive(int), default=None,
                      help="tracks per shard, the unit a killed run redoes (default 256, or the folder's)")
    return parser


def _rate_list(text):
    """argparse type: '3200,16000' -> (3200, 16000)."""
    rates = tuple(_positive(int)(r) for r in text.split(","))
    if len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"repeated rate in {text!r}")
    return rates


def _prepare_command(args):
    """`python data.py prepare`: the prepared folder of store.py; prints hours and throughput."""
    import time

    import store
    start = time.time()
    try:
        summary = store.prepare(args.manifest, args.out, args.rates or store.DEFAULT_RATES, args.dtype,
                                args.workers, args.shard_tracks)
    except (store.data.ManifestError, store.data.StoreError) as e:   # run as a script, this file is not
        raise StoreError(str(e)) from None                           # the `data` module store.py imports
    except KeyboardInterrupt:
        sys.exit("data.py prepare: interrupted; the same command resumes from the last finished shard")
    minutes = (time.time() - start) / 60
    print(f"{args.out}: {summary['tracks']} tracks ({summary['hours']:.2f} h) at {summary['rates']} Hz, "
          f"{summary['skipped']} files skipped; {minutes:.1f} min this run")


def main(argv=None):
    """Entry point; user mistakes exit 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "toy":
            toy_corpus.run(args)
        elif args.command == "tunes":
            toy_corpus.build_tune_asset(args.out)
        elif args.command == "prepare":
            _prepare_command(args)
        else:
            _check_command(args)
    except (ManifestError, OSError, StoreError) as e:
        parser.exit(2, f"data.py: error: {e}\n")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------------------
# Command lines built from dataclasses (train.py, evaluate.py, pseudolabel.py)

def add_dataclass_flags(parser, cls):
    """One flag per field of dataclass `cls` (--snake-case), with its default and metadata["help"].

    bool fields are switches; metadata "many" makes a repeatable flag collecting a list,
    "required" a required one. The default is appended to the help unless the help names it.
    """
    for f in dataclasses.fields(cls):
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif meta.get("many"):
            parser.add_argument(flag, action="append", default=[], metavar="FILE", help=meta["help"])
        else:
            required = meta.get("required", False)
            shown = required or "default" in meta["help"]
            kind = type(f.default) if f.default is not None else f.type   # None: a preset fills it in
            parser.add_argument(flag, type=kind, default=f.default, required=required,
                                help=meta["help"] + ("" if shown else " (default: %(default)r)"))
