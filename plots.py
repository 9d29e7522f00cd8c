"""Pictures, drawn with matplotlib: log-mel spectrograms, loss curves and the ablation panels.

One spectrogram writer (`save_spectrogram`) serves sample.py's `--save-stages`, train.py's
snapshots and the examples in docs/. Figures are built with matplotlib's object API
(`matplotlib.figure.Figure`), which needs no display and keeps no global state.
"""
import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

import data
from data import MEL_FPS


def save_spectrogram(path, mel, title=""):
    """A PNG of a log-mel spectrogram (80, F) at 100 frames per second, values in [-1, 1].

    Low frequencies at the bottom, time in seconds along x, one fixed colour scale (the log-mel's
    range: -1 is 100 dB under full scale, 1 is full scale), so that pictures compare across stages.
    """
    mel = np.asarray(mel, dtype=np.float32)
    seconds = mel.shape[-1] / MEL_FPS
    fig = Figure(figsize=(min(12.0, 2.0 + 1.5 * seconds), 2.6), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=-1.0, vmax=1.0,
                      extent=(0.0, seconds, 0, mel.shape[0]), interpolation="nearest")
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel channel")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, pad=0.01, label="log-mel")
    fig.tight_layout()
    fig.savefig(path)


def save_wave_spectrogram(path, wave, sample_rate, title=""):
    """save_spectrogram of a waveform's log-mel (data.log_mel: 16 kHz, 80 channels, 100 fps)."""
    save_spectrogram(path, data.log_mel(np.asarray(wave, dtype=np.float32), sample_rate), title)


def save_losses(path, losses):
    """The training loss against the step, log scale: losses [(step, loss)]."""
    steps, values = zip(*losses)
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot()
    ax.semilogy(steps, values, lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path)


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


def plot_panels(path, title, panels, cols, footer=""):
    """Panels in a grid of `cols` columns under a title, a footnote below; written as a PNG.

    Each panel's y range is its data's, so that small differences stay visible; the reference value
    is written in the panel's label and drawn dashed (off the range, the axis does not stretch to it).
    """
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.7 * rows + 0.6), dpi=100)
    fig.suptitle(title)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.plot(panel.xs, panel.ys, "o-", color="tab:blue", lw=1.5, ms=4)
        label = panel.ylabel + ("" if panel.ref is None else f"; GT {panel.ref:.3g}")
        ax.set_title(f"{panel.title}\n{label}", fontsize=8)
        ax.set_xticks(panel.xs, panel.xlabels, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.autoscale(False)
        if panel.ref is not None:
            ax.axhline(panel.ref, color="grey", ls="--", lw=1)
        for x, y, note in zip(panel.xs, panel.ys, panel.notes or []):
            ax.annotate(str(note), (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6,
                        color="grey")
    fig.text(0.01, 0.01, "GT (dashed): the ground truth, another real clip that fits the prompt" + footer, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
