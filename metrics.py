"""The paper's evaluation metrics (section 4.3.2): FAD and MuLan similarity, and the audio embedders
they read.

- FAD (Kilgour et al. 2018): the Frechet distance between Gaussian fits of two embedding sets ->
  `gaussian_fit`, `frechet_distance`, `fad`;
- its audio encoders -> the embedders, each a callable from log-mel spectrograms (N, 80, F) (the
  16 kHz, 100 fps `data.log_mel`) to embeddings (N, K, E), K windows per clip:
    `MfccEmbedder` ("MFCC"): fixed, untrained statistics, independent of anything trained here.
        It stands where the paper's VGGish stands: neither VGGish nor Trill weights are available
        in a form this project may ship, so FAD_MFCC replaces FAD_VGG, on another scale. Per 1 s
        window (VGGish frames are 0.96 s), the mean and standard deviation of 13 MFCCs and the
        mean absolute MFCC change between frames;
    `MulanEmbedder` ("MuLan"): our MuLan-style audio tower (pseudolabel.py), clip-wise, windows
        averaged as pseudolabel.embed_audio does;
- MuLan similarity: cosine similarity of generated audio with its prompt ("audio <-> gt-text")
  and with ground-truth audio ("audio <-> gt-audio"), beside the ground truth and a randomly
  shuffled pairing -> `mulan_similarities`, `similarity_rows` (Table 6's layout).

FAD from few clips is biased upwards (Binkowski et al. 2018): compare rows of one table only,
which share N. FAD_MuLan with N < E = 128 clips fits a singular covariance; the distance is still
well defined (`frechet_distance` says how).
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct

import data
import pseudolabel
from data import MEL_FPS


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

def log_mels(waves, sample_rate, chunk=32):
    """[N x T] audio at `sample_rate` -> [N x 80 x F] float32 numpy: data.log_mel (16 kHz, 100 fps)."""
    waves = torch.as_tensor(np.asarray(waves, dtype=np.float32))
    return np.concatenate([data.log_mel(waves[i:i + chunk], sample_rate).numpy()
                           for i in range(0, len(waves), chunk)])


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
        return pseudolabel.embed_text(self.model, list(texts)).numpy()


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
