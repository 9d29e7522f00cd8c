"""Audio measurements of prompt adherence: the toy corpus's audible vocabulary, measured.

The paper scores adherence with MuLan similarity (section 4.3.2). The toy corpus also uses words
with audible, measurable meanings (`slow`/`fast`, `bass`/`flute`, `drums`/`solo`; toy_corpus.py's docstring has
the table), and these plain numpy/scipy measurements check them:
- `onset_rate`: note onsets per second, from a spectral-flux novelty curve with peak picking
  (Bello et al., 2005); `fast` clips must score above `slow` ones;
- `median_pitch`: the median fundamental in MIDI numbers, from the normalized square difference
  function of each frame (McLeod & Wyvill, 2005); separates `bass` (28-52) from `flute` (72-88);
- `percussive_ratio`: the share of spectrogram energy that median-filtering harmonic/percussive
  separation (Fitzgerald, 2010) assigns to the percussive part; `drums` above `solo`.
All three work at any sample rate from 3.2 kHz up: window lengths are set in seconds.
`python evaluate.py analyze FILE...` prints them.
"""
import math

import numpy as np
import soundfile as sf
from scipy import ndimage

import data


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


ANALYZE_BLOCK_SECONDS = 60.0


def analyze(path, block_seconds=ANALYZE_BLOCK_SECONDS):
    """The three measurements of one audio file (mixed down to mono), read in blocks of
    `block_seconds` so that memory stays bounded for any length. A file no longer than one block is
    measured whole; a longer one per block, then combined: onsets summed over the whole duration,
    the median of the blocks' median pitches, the blocks' percussive ratios weighted by their energy."""
    onsets, pitches, percussive, energy, total = 0.0, [], 0.0, 0.0, 0
    with sf.SoundFile(path) as f:
        rate = f.samplerate
        for block in f.blocks(blocksize=max(1, int(block_seconds * rate)), dtype="float32", always_2d=True):
            wave = block.mean(axis=1)
            if not np.isfinite(wave).all():
                raise ValueError("NaN or infinite samples")
            total += len(wave)
            if total > len(wave) and len(wave) < rate:      # a tail under 1 s after whole blocks: too short to
                continue                                    # measure alone, counted in the duration
            onsets += onset_rate(wave, rate) * len(wave) / rate
            pitches.append(median_pitch(wave, rate))
            e = float(np.square(wave, dtype=np.float64).sum())
            percussive, energy = percussive + percussive_ratio(wave, rate) * e, energy + e
    if total == 0:
        raise ValueError("no samples")
    voiced = [m for m in pitches if np.isfinite(m)]
    pitch = float(np.median(voiced)) if voiced else math.nan
    return {"file": path, "sample_rate": rate, "seconds": total / rate,
            "onset_rate": onsets / (total / rate), "median_pitch": pitch,
            "note": midi_name(pitch), "percussive_ratio": percussive / energy if energy > 0 else 0.0}


# ----------------------------------------------------------------------------------------------
# Fidelity: how clean and how tonal a clip is, and a timbre summary (bench/judge.py)

def noise_floor_db(wave, sample_rate, band_hz=8000.0, peak_share=0.001):
    """How far the spectrogram's floor lies under its peaks, in dB (larger = cleaner).

    Power STFT (64 ms Hann window, 16 ms hop); the bins above DC and below min(band_hz, Nyquist);
    the peak level is the (1 - peak_share) quantile of their dB values (the loudest 0.1% of
    bins: the partials), the floor their median. A clean tonal clip has most bins between partials
    and between notes, far under its peaks; white noise of any level lifts the median towards them
    (white noise alone: ~10 dB).
    """
    power, _ = _stft_power(wave, sample_rate, 0.064, 0.016)
    freqs = np.arange(power.shape[0]) * sample_rate / (2 * (power.shape[0] - 1))
    db = 10.0 * np.log10(power[(freqs > 0) & (freqs < min(band_hz, sample_rate / 2))] + 1e-20)
    return float(np.quantile(db, 1.0 - peak_share) - np.median(db))


FLOOR_BANDS_HZ = (0.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


def band_floors_db(wave, sample_rate, edges=FLOOR_BANDS_HZ, peak_share=0.001):
    """`noise_floor_db` band by band: the peak level of the whole clip (under the last edge) minus the
    median bin of each band between consecutive `edges` (NaN for a band above the Nyquist rate).
    Where the hiss lies: the overall median falls in the widest band with any content."""
    power, _ = _stft_power(wave, sample_rate, 0.064, 0.016)
    freqs = np.arange(power.shape[0]) * sample_rate / (2 * (power.shape[0] - 1))
    db = 10.0 * np.log10(power + 1e-20)
    inside = (freqs > 0) & (freqs < min(edges[-1], sample_rate / 2))
    peak = np.quantile(db[inside], 1.0 - peak_share)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = inside & (freqs >= lo) & (freqs < hi)
        out.append(float(peak - np.median(db[band])) if band.any() and lo < sample_rate / 2 else float("nan"))
    return np.array(out)


def confident_note_fraction(wave, sample_rate, threshold=0.6, fmin=30.0, fmax=1600.0):
    """Share of the clip's non-quiet frames where a pitch tracker finds a confident note, in [0, 1].

    The NSDF pitch tracker of `median_pitch` (McLeod & Wyvill 2005) at 16 kHz: 1024-sample frames
    (64 ms, short enough that most frames of a fast tune hold one note) every 256 samples; a frame is
    quiet when its RMS is more than 20 dB under the loudest frame's; a frame holds a confident note
    when its best key maximum of the NSDF at lags of fmin..fmax reaches `threshold` (a clean
    periodic tone: ~1; noise: well under 0.5). On real toy-corpus clips (chords and drums included)
    0.6 finds notes in ~97% of frames; white noise 10 dB under the music brings that to ~87%.
    Returns nan for a silent clip.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if sample_rate != PITCH_RATE:
        wave, sample_rate = data.fft_resample(wave, sample_rate, PITCH_RATE), PITCH_RATE
    n = 1024
    wave = np.pad(wave, (0, max(0, n - len(wave))))
    starts = np.arange(0, len(wave) - n + 1, n // 4)
    frames = wave[starts[:, None] + np.arange(n)[None, :]]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    if rms.max() <= 0:
        return math.nan
    frames = frames[rms > 0.1 * rms.max()]
    lo, hi = max(2, int(sample_rate / fmax)), min(int(math.ceil(sample_rate / fmin)), n // 2 - 2)
    d = _nsdf(frames)[:, lo - 1:hi + 2]
    mid = d[:, 1:-1]
    peak = (mid > 0) & (mid >= d[:, :-2]) & (mid > d[:, 2:])
    best = np.where(peak, mid, -np.inf).max(axis=1)
    return float((best >= threshold).mean())


def mfcc_stats(wave, sample_rate, n_coeffs=20):
    """Mean and standard deviation over frames of the first n_coeffs MFCCs: a (2 n_coeffs,) array.

    MFCCs here are the orthonormal DCT-II along frequency of data.log_mel (80 HTK-mel bands to
    8 kHz, 100 frames per second, dB mapped to [-1, 1]); audio at another rate is brought to 16 kHz
    first, so that clips of any stage compare.
    """
    from scipy.fft import dct

    spec = data.log_mel(np.asarray(wave, dtype=np.float32), sample_rate)          # (80, frames)
    mfcc = dct(spec.astype(np.float64), type=2, axis=0, norm="ortho")[:n_coeffs]   # (n_coeffs, frames)
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])
