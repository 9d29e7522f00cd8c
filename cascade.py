"""The five stages of the Noise2Music cascade (section 3.3, Tables 2, 3, 7 and 8).

Two pipelines share the last stage (Figure 1 of the paper, figure-cascade.png):

    waveform:     text -> wave-generator (3.2 kHz) -> cascader (16 kHz)  -> super-res (24 kHz)
    spectrogram:  text -> spec-generator (log-mel)  -> vocoder (16 kHz)   -> super-res (24 kHz)

This file holds, per stage and per scale, everything that differs between stages: the U-Net
of Table 8 (`unet_config`), and the training and inference settings of Tables 2, 3 and 7
(`stage_spec`). `full` is the paper; `toy` shrinks widths, depths, clip lengths and step counts
so that the whole cascade trains on a 2-core CPU in minutes, through the same code. Not in the
paper, each measured in the notes below: super-res keeps its input's band (both scales), and at
toy scale the spectrogram generator samples at w = 3 and the vocoder projects its x_0 estimates
onto its log-mel's magnitude (`mel_projection`, GLA-Grad).

Parameter counts at `full` (`python cascade.py`, built on the meta device), assuming a T5-large
text encoder (d_model = 1024; the paper does not name the T5 size, NOTES trap 4):

    stage            ours     Table 2   difference
    wave-generator   740.3M   724M      +2.3%
    cascader         527.0M   487M      +8.2%
    spec-generator   854.3M   745M      +14.7%
    vocoder           35.7M   25.7M     +39%
    super-res         89.4M   81M       +10.3%

Where the last three come from, following Figure 5 literally (two k-wide convolutions, an FC
on the residual path and a CombineEmb FC in every block; blocks doubled by the mirrored up path):
  - vocoder: its convolutions alone are 2 paths * 4 blocks * 2 convs * 5 * (128^2 + 128^2 +
    256^2 + 512^2) = 28.8M, already 3.1M above Table 2's 25.7M, before the residual FCs
    (2.9M), the CombineEmb layers (2 * 4 * 128 * 2 * (128+128+256+512) = 2.1M) and the
    re-sampling convolutions (1.8M). No reading of Figure 5 with these widths reaches 25.7M;
    Table 2 may count a model with single convolutions or fewer up-path blocks.
  - spec-generator: convolutions 2 * 6 * 2 * 9 * (256^2 + 2 * 512^2 + 768^2 + 1024^2) = 481M,
    attention at the last two depths (self 4C^2 + cross 2C^2 + 2*C*1024 + two 2C MLPs 8C^2)
    2 * 6 * (14 * (768^2 + 1024^2) + 2048 * (768 + 1024)) = 319M. Removing the residual FCs
    (26.8M) would still leave +11%; a T5-base text width (768) saves only 11M more.
  - super-res: convolutions 2 * 4 * 2 * 7 * (2 * 256^2 + 2 * 512^2) = 73.4M, residual FCs 5.2M,
    CombineEmb 6.3M, re-sampling 4.2M, the augmentation-level layer (unet1d) 0.07M: 89.4M, 0.3
    points over the 10% band. We keep Figure 5 as drawn rather than drop a layer to fit a count.
"""
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

import diffusion
from unet1d import UNetConfig

STAGES = ("wave-generator", "cascader", "spec-generator", "vocoder", "super-res")
SCALES = ("toy", "full")
MEL_FPS = 100           # frames per second of the log-mel (section 3.3.2)

FULL_TEXT_DIM = 1024    # T5-large / Flan-T5-large d_model, assumed (NOTES trap 4)
TOY_TEXT_DIM = 128      # the toy T5 encoder trained here (text.py)
F, T = False, True

# Table 8, verbatim. Keys: base dim, kernel, strides, channel multipliers, blocks, self/cross-attn.
_FULL_UNETS = {
    "wave-generator": UNetConfig(256, 7, (4,) * 6, (1, 1, 2, 3, 4, 4), (3, 3, 3, 4, 4, 4), (F, F, F, T, T, T), (F, F, F, T, T, T), 8,
                                 in_channels=1, text_dim=FULL_TEXT_DIM),
    "cascader": UNetConfig(256, 7, (4,) * 5, (1, 1, 2, 3, 4), (3, 3, 4, 6, 6), (F,) * 5, (F, F, F, T, T), 8,
                           in_channels=1, cond_channels=1, text_dim=FULL_TEXT_DIM, aug_level=True),
    "spec-generator": UNetConfig(256, 9, (4, 3, 2, 2, 2), (1, 2, 2, 3, 4), (6,) * 5, (F, F, F, T, T), (F, F, F, T, T), 8,
                                 in_channels=80, text_dim=FULL_TEXT_DIM),
    "vocoder": UNetConfig(128, 5, (2, 4, 4, 5), (1, 1, 2, 4), (4,) * 4, (F,) * 4, (F,) * 4, 8,
                          in_channels=1, aligned_channels=80, aligned_rate=160, aug_level=True),
    "super-res": UNetConfig(256, 7, (4,) * 4, (1, 1, 2, 2), (4,) * 4, (F,) * 4, (F,) * 4, 8,
                            in_channels=1, cond_channels=1, aug_level=True),
}

# The toy presets: the same depths' roles (attention at the bottom, the vocoder's strides
# multiplying to the 160-sample hop of a 100 fps spectrogram at 16 kHz), far smaller widths.
# The waveform stages keep their width where the sound is: every depth of a U-Net runs at the rate
# of the depth above divided by its stride, so a partial at f Hz lives only at the depths whose
# rate exceeds 2f (the vocoder's second depth runs at 2 kHz: a flute's 700 Hz fundamental is
# near its Nyquist limit and its harmonics above it; only the first, 8 kHz depth can hold them).
# So the toy presets put their extra blocks and width at the top: the wave generator and the
# cascader have width 32 and two blocks at their first two depths (was 16 / 32 and one block),
# the vocoder 2, 3 and 2 blocks at its first three depths and width 32 from its second (was one
# block each, 16 / 16 / 32). At equal steps this cut the wave generator's training loss from 0.145
# to 0.115 (step 1500) and the vocoder's from 0.046 to 0.038 (step 4000). The toy vocoder still
# does not render flute: from real flute log-mels it makes noise below 1 kHz. A sustained partial's
# phase is not in the log-mel, so the denoiser must find it in x_t, which at high noise takes a long
# window at a rate that holds the partial; the 8 kHz depth reaches 32 samples (4 ms) and a flute's
# fundamental (523-1319 Hz) does not fit the 2 kHz depth. Measured and not shipped: strides 2, 2, 8,
# 5 with dilations (unet1d.UNetConfig.dilation = (2, 2, 1, 1), ~63 ms at the 8 and 4 kHz depths),
# trained the same 6000 steps. Its own 16 kHz output ordered more flute / bass pairs (real log-mels
# 70% against 47%; generated 65 / 70 / 90% against 50 / 55 / 60%) and kept 94.2% of real tempo
# pairs (80.5%), but the whole spectrogram path lost register at 24 kHz (60 / 60 / 70% against
# 75 / 75 / 65%), FAD_MFCC rose from 4.9 to 7.9 and MuLan audio-text fell from 0.40 to 0.27, at
# twice the time (README, Results). The shipped toy vocoder samples with the mel projection instead
# (below, _TOY_PROJECT).
# Super-res has three depths, width 16 and two blocks at the top (was two depths, width 12, one
# block: 0.02M parameters, 1000 training steps); see the note on keep_band below.
_TOY_UNETS = {
    "wave-generator": UNetConfig(16, 5, (4, 4, 4, 4), (2, 2, 4, 8), (2, 2, 1, 2), (F, F, F, T), (F, F, T, T), 4,
                                 in_channels=1, text_dim=TOY_TEXT_DIM),
    "cascader": UNetConfig(16, 5, (4, 4, 4), (2, 2, 4), (2, 2, 1), (F, F, F), (F, F, T), 4,
                           in_channels=1, cond_channels=1, text_dim=TOY_TEXT_DIM, aug_level=True),
    # base >= 80: the entry convolution is x_t's only way in, and a base narrower than the 80 mel
    # channels cannot even pass x_t through (a base of 48 left the loss stuck at ~0.3).
    "spec-generator": UNetConfig(96, 5, (2, 2, 2), (1, 1, 1), (1, 2, 2), (F, F, T), (F, T, T), 4,
                                 in_channels=80, text_dim=TOY_TEXT_DIM),
    "vocoder": UNetConfig(16, 5, (2, 4, 4, 5), (1, 2, 2, 4), (2, 3, 2, 1), (F,) * 4, (F,) * 4, 4,
                          in_channels=1, aligned_channels=80, aligned_rate=160, aug_level=True),
    "super-res": UNetConfig(16, 5, (4, 4, 4), (1, 2, 4), (2, 2, 1), (F,) * 3, (F,) * 3, 4,
                            in_channels=1, cond_channels=1, aug_level=True),
}


@dataclass(frozen=True)
class StageSpec:
    """Training (Table 2, section 4.1) and inference (Tables 3, 7) settings of one stage."""
    name: str
    output: str               # "wave" (B, 1, T) or "spec" (B, 80, frames)
    sample_rate: int          # rate of the output audio; for "spec", the audio rate of the log-mel
    frame_rate: int           # frames per second of the output sequence (= sample_rate for waves)
    clip_seconds: float       # length of a generated clip
    crop_seconds: tuple       # (min, max) random training crop, or () for the whole clip
    token_len: int            # T5 tokens of the text prompt; 0 = no text route
    loss_weighting: str       # w_t of eq. 1: "unit" or "sigma2"
    schedule: str             # noise schedule: "cosine" or "linear"
    cond_rate: int            # rate of the low-fidelity audio stacked with x_t; 0 = none
    aligned: bool             # the spectrogram enters as the aligned input (vocoder)
    aug_t_max: float          # conditioning noise augmentation, t ~ U[0, t_max]; 0 = none
    blur: str                 # conditioning blur: "1d", "2d" or ""
    blur_sigma: tuple         # (min, max) blur sigma
    paper_train_steps: int    # Table 2 training steps
    paper_batch: int          # section 4.1 batch size
    steps: int                # inference steps (Table 7 lengths at full)
    step_schedule: str        # Table 3: "front-heavy" / "back-heavy" / "uniform"
    gamma: float              # Table 3 stochasticity of eq. 4
    w: float                  # Table 3 CFG scale (1 = no guidance)
    clip: float = diffusion.DEFAULT_CLIP_PERCENTILE   # default dynamic-clipping percentile (0 = none)
    keep_band: bool = False   # replace the output's band below cond_rate / 2 by the input's (see below)
    project: float = 1.0      # vocoder: x_0 estimates take the log-mel's magnitude at t > this (see below); 1 = never

    @property
    def has_text(self):
        return self.token_len > 0

    @property
    def length(self):
        """Sequence length of a whole clip at this stage's output rate."""
        return round(self.clip_seconds * self.frame_rate)


_FULL_SPECS = {
    "wave-generator": StageSpec("wave-generator", "wave", 3200, 3200, 30.0, (), 64, "unit", "cosine", 0, False,
                                0.0, "", (), 1_600_000, 2048, 1000, "front-heavy", 0.0, 10.0),
    "cascader": StageSpec("cascader", "wave", 16000, 16000, 30.0, (3.0, 4.0), 64, "unit", "linear", 3200, False,
                          0.5, "1d", (0.1, 5.0), 460_000, 2048, 800, "front-heavy", 1.0, 5.0),
    # No dynamic clipping for the log-mel (the paper gives no percentile: NOTES trap 3; see below).
    "spec-generator": StageSpec("spec-generator", "spec", 16000, 100, 30.0, (), 96, "sigma2", "linear", 0, False,
                                0.0, "", (), 1_800_000, 2048, 2000, "back-heavy", 0.0, 5.0, clip=0.0),
    "vocoder": StageSpec("vocoder", "wave", 16000, 16000, 30.0, (3.0, 4.0), 0, "unit", "linear", 0, True,
                         1.0, "2d", (0.2, 1.0), 840_000, 2048, 100, "front-heavy", 0.0, 1.0),
    # Super-res crops are not stated in the paper; we use the cascader's 3-4 s.
    "super-res": StageSpec("super-res", "wave", 24000, 24000, 30.0, (3.0, 4.0), 0, "unit", "linear", 16000, False,
                           1.0, "", (), 270_000, 4096, 800, "front-heavy", 0.0, 1.0, keep_band=True),
}

# Dynamic clipping (Imagen: s = max(1, percentile of |x0|), x0 -> clamp(x0, -s, s) / s) shrinks a
# saturated estimate towards 0, the middle of the data range. For a log-mel, 0 is -40 dB and the
# range's floor (-1, -100 dB) is silence, a third of a toy clip's bins: under Table 3's w = 5 the
# toy spectrogram generator's 99.5th percentile of |x0| is ~3 at every step, so clipping divided
# its estimates by ~3 and filled the silence with a haze (97% of generated bins above -0.8, real
# 69%) in which pitch was at chance. Without it (clip 0) the same checkpoint, heard through
# Griffin-Lim, orders 95% / 90% / 75% of tempo / register / drums prompt pairs right (75% / 55% /
# 50% with clipping at 0.995; 85% / 85% / 75% with the estimate clamped to [-1, 1]), and the whole
# spectrogram path 80% / 90% / 100% (65% / 50% / 100%; bench/adherence.py). The price: under w = 5
# nearly every generated log-mel has a few bins louder than any real one (up to 1.0 against the
# corpus's 0.48), which the vocoder does not turn into clipped audio. The other stages keep
# diffusion.DEFAULT_CLIP_PERCENTILE: their audio lies far inside [-1, 1].

# keep_band: super-res replaces its output's band below 8 kHz by its input's (keep_input_band). Its
# job is the band its 16 kHz input lacks, but a diffusion model resynthesizes the whole signal, and
# the toy one adds onsets there (bench/stage_tempo.py): on 20 fast and 20 slow real clips taken to
# 16 kHz and back up, the onset rate (evaluate.py) orders 99.8% of the 400 pairs right, the first
# toy super-res's output 93.2% (mean onset-rate error 0.99 per second) and the current larger one's
# 95.8% (0.54); with the input's low band kept, 99.2% and 99.8% (0.24 and 0.15, the plain
# up-sampling's 0.14). The band above 8 kHz is not what moves the onsets: the larger model's own
# output low-passed at 8 kHz gets 94.8%. On the spectrogram path the register figure moved with
# the model (README, Results: the unprojected vocoder renders flute as noise, whose pitch is arbitrary). Audio
# super-resolution models keep the input's band the same way (NU-Wave 2, AudioSR); the paper does
# not say. `--super-res-keep-band 0` samples it as the paper's wiring alone would.
TOY_CLIP_SECONDS = 4.0
# Fewer steps than Table 7, same schedules. The wave generator's 200 and the cascader's 40 (50 and 20
# at first, then 100 and 40) were set by bench/adherence.py: with 50 steps the wave generator's own
# output got 75% of fast vs slow prompt pairs right, with 100 and 200 steps 95% (same noise); on two
# more draws 95% and 65% at 100 steps, 100% and 95% at 200.
_TOY_STEPS = {"wave-generator": 200, "cascader": 40, "spec-generator": 50, "vocoder": 25, "super-res": 15}
# Table 3's CFG scales, but the toy spectrogram generator's: w = 3, not 5. Heard through Griffin-Lim,
# its own log-mels of 20 flute / bass prompt pairs order 80% / 90% / 75% of the pairs right at w = 5
# (three draws), 100% / 95% / 85% at w = 3, 100% / 100% / 80% at w = 2 and 60% / 75% / 70% at w = 8;
# the section 4.5 ablation (README) also found it better with less guidance.
_TOY_W = {"spec-generator": 3.0}
# Mel projection (StageSpec.project, `--vocoder-project`; GLA-Grad, Liu et al. 2024; not in
# Noise2Music): at each sampling step with t above `project`, the vocoder's estimate of x_0 keeps its
# own phase but takes the STFT magnitude its log-mel implies (data.project_to_mel, one Griffin-Lim
# round), scaled down per clip where its peak would pass MEL_PROJECTION_PEAK. The toy vocoder on
# its own renders a log-mel too quietly and loses a flute's partials (the note above the toy
# presets): on the toy spectrogram generator's log-mels its 16 kHz output has 0.4 of the loudness
# that Griffin-Lim gives them (RMS 0.041 against 0.116, 120 clips; the corpus is at 0.1); of 20
# flute / bass prompt pairs it ordered 55% right, solo flutes at 0.2 of their Griffin-Lim loudness
# with no pitch or a wrong one, flutes with drums at the kick's pitch (~MIDI 30). Projected (one
# draw, no peak limit): at every step 95% (19 of 20 flutes at MIDI 78-87, as Griffin-Lim has them);
# at t > 0.02 (the last 5 of its 25 steps its own) 95%; half-way (x_0 + (P x_0 - x_0) / 2) 95%; only
# at t > 0.3, 55% (its own low-noise steps undo the flute). The peak limit: the projection passes
# the log-mel's loudness into the audio, and some generated log-mels are louder than the training
# clips (kick-drum bins up to 0.86 against the corpus's 0.49, Griffin-Lim RMS up to 0.38), so
# unlimited it clipped up to 0.52% of a clip's samples at 16 kHz (0.31% at 24 kHz; clamping the
# log-mel at a full-scale sine's level, 0.58, changed nothing). Whole spectrogram path,
# bench/adherence.py, tempo / register / drums on three draws: unlimited at t > 0.02 95 / 95 / 100,
# 90 / 90 / 95, 90 / 100 / 100 (0.30-0.32% clipped); limited at t > 0.02 90 / 95 / 100, 90 / 85 / 95,
# 90 / 85 / 100; limited at every step (the default) 95 / 95 / 100, 95 / 85 / 90, 90 / 100 / 100,
# at most 0.0021% clipped; not projected 90 / 75 / 100, 80 / 75 / 90, 80 / 65 / 95. Started
# instead from the log-mel's Griffin-Lim rendering noised to t = 0.3 (SDEdit; a knob tried and
# dropped): 85 / 55 / 85, 0.32% clipped. (Register at 24 kHz then measured the pitch at the clip's own
# rate; with every clip taken at 16 kHz, evaluate.median_pitch since, the default reads 95 / 95 / 100,
# 95 / 95 / 90, 90 / 90 / 100.) The projection stands in for training: the same preset trained at
# batch 256 for 1032 steps on a GPU (bench/gpu_vocoder.py, 2.75 times the clips of the CPU recipe)
# orders 95% of 20 real flute / bass pairs unprojected, this checkpoint 55%.
# `--vocoder-project 1` samples as the paper's wiring would.
_TOY_PROJECT = {"vocoder": 0.0}
MEL_PROJECTION_PEAK = 0.9


# The preconditioning's data RMS (unet1d.py): waveforms are stored at an RMS of about 0.1 (the
# toy corpus is normalized to it; data.py's manifests of real audio are not rescaled, and ~0.1 is
# typical of mastered music); the log-mel lies in [-1, 1] with a spread of ~0.4-0.7, for which
# EDM's 0.5 for images in [-1, 1] serves.
DATA_STD = {"wave": 0.1, "spec": 0.5}

# The toy waveform stages' noise schedules are shifted by 2 ln 5 in log-SNR (diffusion.shifted): the
# schedules of Table 2 suit data of unit scale (images in [-1, 1], spread ~0.5), but waveforms
# here have an RMS of ~0.1, so the SNR the network sees is 25 times lower than the schedule's.
# Unshifted, only 10% of the linear schedule's training times (19% of the cosine's) put the clip's
# own signal-to-noise ratio in [0.1, 100]; shifted, 34% (61%). Trained as long as before, the
# shifted cascader keeps its real 3.2 kHz input's low band to 0.012 RMS (0.016 unshifted) and
# makes a high band of RMS 0.029 against the real 0.024 (0.034), and the wave generator's own
# output gets 90% of drums vs solo prompt pairs right (70%; bench/adherence.py). The paper does
# not say at what scale its waveforms enter the diffusion (NOTES); `full` keeps Table 2's
# schedules as named.
SNR_SHIFT = 2 * math.log(DATA_STD["spec"] / DATA_STD["wave"])   # as if waves had the spread 0.5


def _toy_spec(full: StageSpec) -> StageSpec:
    """Shrink a full-scale spec: 4 s clips, crops scaled by 4/30, half the tokens, fewer steps,
    (waveform outputs) the shifted noise schedule, the spectrogram generator's w = 3 and the
    vocoder's mel projection."""
    k = TOY_CLIP_SECONDS / full.clip_seconds
    crop = tuple(round(c * k, 3) for c in full.crop_seconds)
    schedule = diffusion.shifted(full.schedule, SNR_SHIFT) if full.output == "wave" else full.schedule
    return replace(full, clip_seconds=TOY_CLIP_SECONDS, crop_seconds=crop, token_len=full.token_len // 2,
                   paper_batch=full.paper_batch, steps=_TOY_STEPS[full.name], schedule=schedule,
                   w=_TOY_W.get(full.name, full.w), project=_TOY_PROJECT.get(full.name, full.project))


def _check(stage, scale):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose 'toy' or 'full'")


def unet_config(stage, scale="toy", text_dim=None) -> UNetConfig:
    """The U-Net of `stage` at `scale` ("full" is Table 8); text_dim overrides the T5 width."""
    _check(stage, scale)
    cfg = (_FULL_UNETS if scale == "full" else _TOY_UNETS)[stage]
    if text_dim is not None and cfg.text_dim:
        cfg = replace(cfg, text_dim=text_dim)
    spec = stage_spec(stage, scale)
    return replace(cfg, data_std=DATA_STD[spec.output], schedule=spec.schedule)


def stage_spec(stage, scale="toy") -> StageSpec:
    """Training and inference settings of `stage` at `scale` (Tables 2, 3, 7 at "full")."""
    _check(stage, scale)
    full = _FULL_SPECS[stage]
    return full if scale == "full" else _toy_spec(full)


def parameter_counts(scale="full"):
    """{stage: parameter count}, built on the meta device (no memory, no time)."""
    from unet1d import UNet1D, count_parameters
    counts = {}
    for stage in STAGES:
        with torch.device("meta"):
            counts[stage] = count_parameters(UNet1D(unet_config(stage, scale)))
    return counts


PAPER_PARAMS = {"wave-generator": 724e6, "cascader": 487e6, "spec-generator": 745e6, "vocoder": 25.7e6, "super-res": 81e6}

if __name__ == "__main__":
    for scale in SCALES:
        for stage, n in parameter_counts(scale).items():
            extra = f"  Table 2: {PAPER_PARAMS[stage] / 1e6:.1f}M ({n / PAPER_PARAMS[stage] - 1:+.1%})" if scale == "full" else ""
            print(f"{scale:4s} {stage:15s} {n / 1e6:8.2f}M{extra}")


# ------------------------------------------------------------------------------------------------
# The wiring of each stage's inputs (Figure 1, section 3.3)

def low_fidelity(wave, rate, low_rate):
    """The cascaders' conditioning: the clip taken down to low_rate, then FFT-up-sampled back.

    Whole clips in, whole clips out (NOTES trap 6: FFT resampling treats the clip as periodic, so
    resample first and crop after). wave: [... x T] at `rate`.
    """
    from data import fft_resample
    T = wave.shape[-1]
    up = fft_resample(fft_resample(wave, rate, low_rate), low_rate, rate)
    return up[..., :T]


def fit_length(x, length):
    """Zero-pad or cut the last axis of a numpy array to `length`."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])])


def training_example(spec: StageSpec, wave, crop, rng):
    """One clip's training tensors for `spec`'s stage, as numpy arrays.

    :param wave: the clip, float32 [T] at spec.sample_rate (the whole clip, uncropped).
    :param crop: the batch's crop length in samples (0 = the whole clip, the generators).
    :param rng: a numpy Generator for the crop position.
    :return: dict with "x0" [C x T'] (audio or log-mel), and "cond" [1 x T'] (the up-sampled
        low-fidelity audio of the cascaders) or "aligned" [80 x T'/160] (the vocoder's log-mel).
    """
    from data import log_mel, random_crop
    if not crop:                                            # generators: the whole clip
        wave = fit_length(wave, round(spec.clip_seconds * spec.sample_rate))
    if spec.output == "spec":
        return {"x0": log_mel(wave, spec.sample_rate)}      # (80, frames)
    signals, hops = [wave[None]], [1]                       # (1, T)
    if spec.cond_rate:
        signals.append(low_fidelity(wave, spec.sample_rate, spec.cond_rate)[None])
        hops.append(1)
    if spec.aligned:
        signals.append(log_mel(wave, spec.sample_rate))     # (80, T // 160)
        hops.append(spec.sample_rate // MEL_FPS)
    if crop:
        signals = random_crop(signals, crop, rng, hops)
    out = {"x0": signals[0]}
    if spec.cond_rate:
        out["cond"] = signals[1]
    if spec.aligned:
        out["aligned"] = signals[-1]
    return out


def crop_length(spec: StageSpec, rng):
    """One crop length (samples) for a batch: U[crop_seconds], whole spectrogram frames; 0 = none."""
    from data import draw_crop_length
    if not spec.crop_seconds:
        return 0
    return draw_crop_length(*spec.crop_seconds, spec.sample_rate, rng, multiple=spec.sample_rate // MEL_FPS)


# ------------------------------------------------------------------------------------------------
# The whole pipeline at inference (section 3.3, Figure 1; settings of Tables 3 and 7)

PIPELINES = {"wave": ("wave-generator", "cascader", "super-res"),
             "spec": ("spec-generator", "vocoder", "super-res")}


@dataclass
class Sampling:
    """Per-stage inference knobs (Table 3); a field left at None takes the stage's default."""
    steps: int = None          # number of denoising steps
    schedule: str = None       # a name of diffusion.STEP_SCHEDULES, or a file of deltas
    gamma: float = None        # eq. 4's stochasticity, in [0, 1]
    w: float = None            # CFG scale (1 = none)
    clip: float = None         # dynamic-clipping percentile of |x0| (0 = no clipping)
    aug: float = None          # noise time of the conditioning input (cascaders, vocoder); default 0 = clean
    keep_band: int = None      # 1: the output keeps the input's band (cascaders; super-res's default), 0: not
    project: float = None      # vocoder: project x_0 estimates onto the log-mel's magnitude at t > this; 1 = never


def resolve_sampling(spec: StageSpec, knobs: Sampling):
    """(deltas, gamma, w, percentile) for a stage: the user's knobs over Table 3's defaults."""
    steps = knobs.steps or spec.steps
    name = knobs.schedule or spec.step_schedule
    if name in diffusion.STEP_SCHEDULES:
        deltas = diffusion.step_schedule(name, steps, stage=spec.name)
    else:
        deltas = diffusion.load_deltas(name)
    gamma = spec.gamma if knobs.gamma is None else knobs.gamma
    w = spec.w if knobs.w is None else knobs.w
    clip = spec.clip if knobs.clip is None else knobs.clip
    return deltas, gamma, w, (clip or None)


class StageModel:
    """One trained stage for inference: the EMA U-Net and its spec, read from a checkpoint."""

    def __init__(self, path, device="cpu", dtype=None):
        from unet1d import UNet1D
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.spec = stage_spec(ckpt["stage"], ckpt["scale"])
        self.t5 = ckpt.get("t5") or ""
        beside = os.path.normpath(os.path.join(os.path.dirname(path), self.t5))
        if self.t5 and not os.path.isabs(self.t5) and os.path.isdir(beside):
            self.t5 = beside          # exported checkpoints name it relative to their folder
        config = UNetConfig.from_dict(ckpt["config"])
        if config.schedule:           # sample with the noise schedule it was trained with
            self.spec = replace(self.spec, schedule=config.schedule)
        self.model = UNet1D(config)
        self.model.load_state_dict({k: v.float() for k, v in ckpt["ema"].items()})
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype, self.step = device, dtype, ckpt["step"]

    def eps_fn(self, w, text=None, text_mask=None, drop=None, **route):
        """eps_fn(x_t, t) for the samplers; with w != 1 and text, cond and uncond in one batch.

        `drop` (B,) bool hides the text of those examples (empty prompts): their cross-attention
        output is zero, as for the text-dropped examples in training.
        """
        def run(x, t, **kw):
            with torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                return self.model(x, t, **kw).float()

        if text is None or w == 1:
            return lambda x, t: run(x, t, text=text, text_mask=text_mask, drop_text=drop, **route)

        def pair(x, t):
            B = x.shape[0]
            both = {k: torch.cat([v, v]) for k, v in route.items()}
            hide = torch.cat([drop if drop is not None else torch.zeros(B, dtype=torch.bool, device=x.device),
                              torch.ones(B, dtype=torch.bool, device=x.device)])   # second half: text hidden
            eps = run(torch.cat([x, x]), torch.cat([t, t]), text=torch.cat([text, text]),
                      text_mask=torch.cat([text_mask, text_mask]), drop_text=hide, **both)
            return eps[:B], eps[B:]
        return pair


def mel_projection(mel, peak=MEL_PROJECTION_PEAK):
    """x_0 -> x_0 with the STFT magnitude of the log-mel `mel` (B, 80, F) and its own phase, scaled
    down per clip where its peak would exceed `peak` (see the note on mel projection above)."""
    from data import mel_magnitude, project_to_mel
    magnitude = mel_magnitude(mel)                # the same at every step

    def project(x0):
        y = project_to_mel(x0, mel, magnitude.to(x0.dtype))
        top = y.abs().amax(dim=(-2, -1), keepdim=True)
        return y * (peak / top.clamp(min=peak))
    return project


def run_stage(stage: StageModel, knobs: Sampling, shape, generator, text=None, text_mask=None,
              unconditional=None, progress=None, **route):
    """Sample one stage: x_T ~ N(0, I) of `shape`, then eq. 4 with CFG and dynamic clipping.

    The vocoder, with a projection time below 1 (StageSpec.project, Sampling.project), replaces each
    x_0 estimate at t above it by its projection onto the log-mel's magnitude (data.project_to_mel;
    see the note on mel projection above).

    :param unconditional: a (B,) bool tensor: examples generated without text (empty prompts).
    """
    spec = stage.spec
    deltas, gamma, w, percentile = resolve_sampling(spec, knobs)
    drop = unconditional.to(stage.device) if unconditional is not None and text is not None else None
    keep = spec.keep_band if knobs.keep_band is None else bool(knobs.keep_band)
    clean = route.get("cond") if keep and spec.cond_rate else None
    project = spec.project if knobs.project is None else knobs.project
    mel = route.get("aligned") if spec.aligned and project < 1 else None
    x_T = torch.randn(shape, generator=generator).to(stage.device)
    if stage.model.config.aug_level:            # the conditioning's noise level (Ho et al. 2022b)
        aug = knobs.aug or 0.0
        level = torch.full((shape[0],), aug, device=stage.device)
        if aug > 0:                             # corrupt the conditioning as in training, at t = aug
            route = {k: diffusion.q_sample(v, level, torch.randn(v.shape, generator=generator).to(v.device),
                                           spec.schedule) for k, v in route.items()}
        route["aug_t"] = level
    eps = stage.eps_fn(w, text, text_mask, drop, **route)
    if text is not None and w != 1:
        eps = diffusion.guided_eps_fn(eps, w, spec.schedule, percentile)
    elif percentile is not None:
        eps = diffusion.clipped_eps_fn(eps, spec.schedule, percentile)
    if mel is not None:
        eps = diffusion.projected_eps_fn(eps, spec.schedule, mel_projection(mel), project)
    x = diffusion.sample(eps, x_T, deltas, spec.schedule, gamma, generator=generator, progress=progress)
    return x if clean is None else keep_input_band(x, clean, spec.sample_rate, spec.cond_rate)


def keep_input_band(out, cond, rate, cond_rate):
    """`out` with its spectrum below cond_rate / 2 (the input's Nyquist frequency) taken from `cond`.

    out, cond: [... x T] at `rate`; cond is the FFT-up-sampled low-fidelity input, which has
    nothing above cond_rate / 2. So the stage contributes only the band its input lacks (the
    low-frequency replacement of audio super-resolution models such as NU-Wave 2 and AudioSR;
    Noise2Music does not say; the note on keep_band above gives the measurements).
    """
    T = out.shape[-1]
    low = torch.fft.rfftfreq(T, 1.0 / rate, device=out.device) < cond_rate / 2
    spectrum = torch.where(low, torch.fft.rfft(cond.double(), dim=-1), torch.fft.rfft(out.double(), dim=-1))
    return torch.fft.irfft(spectrum, n=T, dim=-1).to(out.dtype)


def cascade_generate(stages, text_encoder, prompts, pipeline, seconds, seed, knobs, device="cpu",
                     progress=None, keep=None, timings=None):
    """Prompts in, 24 kHz audio out, through the three stages of `pipeline` (Figure 1).

    :param stages: {name: StageModel}; text_encoder: (tokenizer, encoder) of load_t5.
    :param knobs: {stage name: Sampling}.
    :param keep: a dict that receives the intermediates (3.2 kHz audio or log-mel, 16 kHz audio).
    :param timings: a dict that receives each stage's wall-clock seconds.
    :return: a (B, T) float tensor at 24 kHz.
    """
    import time
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock[0]
        clock[0] = now

    from data import fft_resample
    gen = torch.Generator().manual_seed(seed)
    B = len(prompts)
    names = PIPELINES[pipeline]
    first, second, third = (stages[n] for n in names)
    unconditional = torch.tensor([p.strip() == "" for p in prompts])

    def encode(spec):
        tokenizer, encoder = text_encoder
        ids, mask = tokenizer(list(prompts), spec.token_len)
        with torch.no_grad():
            emb = encoder(ids.to(encoder.embed.weight.device), mask.to(encoder.embed.weight.device))
        return emb.float().to(device), mask.to(device)

    # stage 1: the generator (text -> 3.2 kHz audio, or text -> log-mel)
    text, mask = encode(first.spec)
    n1 = round(seconds * first.spec.frame_rate)
    C1 = 80 if first.spec.output == "spec" else 1
    x1 = run_stage(first, knobs[names[0]], (B, C1, n1), gen, text, mask, unconditional, progress and progress(names[0]))
    lap(names[0])
    # stage 2: cascader (FFT-up-sampled 3.2 kHz audio stacked with x_t) or vocoder (aligned log-mel)
    n2 = round(seconds * 16000)
    if second.spec.aligned:
        x2 = run_stage(second, knobs[names[1]], (B, 1, n1 * 160), gen, progress=progress and progress(names[1]),
                       aligned=x1)[..., :n2]
    else:
        cond = fft_resample(x1, first.spec.sample_rate, 16000)[..., :n2]
        text2, mask2 = encode(second.spec)
        x2 = run_stage(second, knobs[names[1]], (B, 1, n2), gen, text2, mask2, unconditional,
                       progress and progress(names[1]), cond=cond)
    lap(names[1])
    # stage 3: super-resolution (FFT-up-sampled 16 kHz audio stacked with x_t, no text)
    n3 = round(seconds * 24000)
    cond = fft_resample(x2, 16000, 24000)[..., :n3]
    x3 = run_stage(third, knobs[names[2]], (B, 1, n3), gen, progress=progress and progress(names[2]), cond=cond)
    lap(names[2])
    if keep is not None:
        keep.update({names[0]: x1.cpu(), names[1]: x2.cpu(), names[2]: x3.cpu()})
    return x3[:, 0].cpu()
