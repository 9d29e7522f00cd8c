"""The five stages of the Noise2Music cascade (section 3.3, Tables 2, 3, 7 and 8).

Two pipelines share the last stage (Figure 1 of the paper, figure-cascade.png):

    waveform:     text -> wave-generator (3.2 kHz) -> cascader (16 kHz)  -> super-res (24 kHz)
    spectrogram:  text -> spec-generator (log-mel)  -> vocoder (16 kHz)   -> super-res (24 kHz)

Either pipeline can end in the stereo super-res instead (`stereo`, not in the paper: PRESETS["stereo"]
says how it works), which makes stereo 24 kHz audio whose mix-down is the mono 16 kHz output.

This file holds everything that differs between stages and between scales, in one table
(`PRESETS`): per stage, its U-Net (Table 8), its training recipe (Table 2, section 4.1) and its
inference defaults (Tables 3 and 7); a setting that differs between scales is written
`ByScale(toy=..., small=..., full=...)`. `full` is the paper; `toy` shrinks widths, depths, clip lengths and
step counts so that the whole cascade trains on a 2-core CPU in minutes, through the same code.
Every value at `full` that the paper does not give is listed in the README's "Departures from the
paper"; so is every toy-only choice (the shifted noise schedules, w = 3 for the spectrogram
generator, the vocoder's mel projection, the clean share of conditioning inputs).

Parameter counts at `full` (`python cascade.py`, built on the meta device), assuming a T5-large
text encoder (d_model = 1024; the paper does not name the T5 size):

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
import time
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

import diffusion
from checks import InputError, check_finite_state, check_identity
from data import (MEL_FPS, MEL_SAMPLE_RATE, Augmentation, draw_crop_length, fft_resample, log_mel, mel_magnitude,
                  project_to_mel, random_crop)
from unet1d import UNet1D, UNetConfig, count_parameters

STAGES = ("wave-generator", "cascader", "spec-generator", "vocoder", "super-res", "stereo")
STEREO = "stereo"       # the stereo super-res, an extension (not in the paper): see PRESETS["stereo"]
TABLE7_ROW = {STEREO: "super-res"}      # Table 7 has no stereo stage: it steps as super-res does
SCALES = ("toy", "small", "full")

FULL_TEXT_DIM = 1024    # T5-large / Flan-T5-large d_model, assumed: the paper does not name the T5 size
TOY_TEXT_DIM = 128      # the toy T5 encoder trained here (text.py)
F, T = False, True

# The preconditioning's data RMS (unet1d.py): waveforms are stored at an RMS of about 0.1 (the
# toy corpus is normalized to it; data.py's manifests of real audio are not rescaled, and ~0.1 is
# typical of mastered music); the log-mel lies in [-1, 1] with a spread of ~0.4-0.7, for which
# EDM's 0.5 for images in [-1, 1] serves.
DATA_STD = {"wave": 0.1, "spec": 0.5}

# Toy waveform stages shift Table 2's noise schedules by 2 ln 5 in log-SNR (diffusion.shifted). The
# schedules suit data of unit scale (images in [-1, 1], spread ~0.5), but waveforms here have an RMS
# of ~0.1, so the network sees an SNR 25 times lower than the schedule's: unshifted, only 10% of the
# linear schedule's training times (19% of the cosine's) put a clip's own SNR in [0.1, 100];
# shifted, 34% (61%). The paper does not say at what scale its waveforms enter the diffusion;
# `full` keeps Table 2's schedules as named.
SNR_SHIFT = 2 * math.log(DATA_STD["spec"] / DATA_STD["wave"])   # as if waves had the spread 0.5


def shifted(schedule):
    """A waveform stage's toy noise schedule: Table 2's, shifted by SNR_SHIFT."""
    return diffusion.shifted(schedule, SNR_SHIFT)


class ByScale(dict):
    """A setting that differs between scales, one keyword per scale: ByScale(toy=16, full=8)."""

    def __init__(self, **values):
        missing = set(SCALES) - set(values)
        if missing:
            raise ValueError(f"ByScale needs a value for every scale; missing {sorted(missing)}")
        super().__init__(values)


def _unets(toy, full):
    """A stage's U-Nets by scale: the small one is the full one (Table 8) at half the base width."""
    return ByScale(toy=toy, small=replace(full, base_dim=full.base_dim // 2), full=full)


@dataclass(frozen=True)
class StageSpec:
    """One stage at one scale: what it makes, how it trains (Table 2, section 4.1) and how it samples
    (Tables 3 and 7). `stage_spec` builds it from the stage's row of PRESETS."""
    name: str
    # what the stage makes, and from what
    output: str               # "wave" (B, channels, T) or "spec" (B, 80, frames)
    channels: int             # audio channels it reads from the data and makes: 1, or 2 (stereo: mid, side)
    sample_rate: int          # rate of the output audio; for "spec", the audio rate of the log-mel
    frame_rate: int           # frames per second of the output sequence (= sample_rate for waves)
    token_len: int            # T5 tokens of the text prompt; 0 = no text route
    cond_rate: int            # rate of the low-fidelity audio stacked with x_t; 0 = none
    aligned: bool             # the spectrogram enters as the aligned input (vocoder)
    unet: UNetConfig          # Table 8 at full (unet_config adds the schedule and the data RMS)
    # training (Table 2, section 4.1; train.py)
    clip_seconds: float       # length of a training clip and of a generated one
    crop_seconds: tuple       # (min, max) random training crop, or () for the whole clip
    loss_weighting: str       # w_t of eq. 1: "unit" or "sigma2"
    schedule: str             # noise schedule: "cosine" or "linear", optionally shifted
    augmentation: Augmentation  # of the conditioning input (data.augment_conditioning); None = no input
    clean_share: float        # share of examples whose conditioning is not augmented
    train_steps: int          # optimizer steps
    batch: int                # examples per process in one forward pass
    accumulate_to: int        # gradient accumulation gathers about this many examples per step; 0 = none
    lr: float                 # peak learning rate (Adam, linear warm-up, cosine decay)
    warmup: int               # warm-up steps
    lr_end: int               # the step where the cosine reaches 0; None = the run's last step
    ema_decay: float          # EMA of the weights, which the sampler uses
    # sampling (Tables 3 and 7; sample.py)
    sampler: str              # a name of diffusion.SAMPLERS: "ancestral" (eq. 4, the paper's), "ddim", "dpmpp-2m"
    steps: int                # denoising steps of eq. 4 (also audio in, which always samples with eq. 4)
    ode_steps: int            # denoising steps of the ODE samplers (ddim, dpmpp-2m); 0 = `steps`
    step_schedule: str        # Table 3: "front-heavy" / "back-heavy" / "uniform"
    gamma: float              # Table 3 stochasticity of eq. 4
    w: float                  # Table 3 CFG scale (1 = no guidance)
    clip: float               # dynamic-clipping percentile of |x_0| (0 = none)
    keep_band: bool           # replace the output's band below cond_rate / 2 by the input's (keep_input_band)
    project: float            # vocoder: x_0 estimates take the log-mel's magnitude at t > this; 1 = never
    mel_fit: int              # vocoder: that magnitude is the estimate's own, fitted in N rounds; 0 = the log-mel's

    @property
    def has_text(self):
        return self.token_len > 0

    @property
    def length(self):
        """Sequence length of a whole clip at this stage's output rate."""
        return round(self.clip_seconds * self.frame_rate)


# ------------------------------------------------------------------------------------------------
# The preset table. `full` is the paper (Tables 2, 3, 7, 8 and section 4.1); a plain value holds at
# every scale. Toy U-Nets keep each depth's role (attention at the bottom, the vocoder's strides
# multiplying to the 160-sample hop of a 100 fps log-mel at 16 kHz) at far smaller widths. A partial
# at f Hz lives only at the depths whose rate exceeds 2f, so the toy waveform U-Nets put their extra
# blocks and width at the top depths.

# `small` is the one-GPU preset between the two: each stage trains on one 24 GB card in about a day,
# on a collection of the user's own (a prepared folder: data.py prepare). It changes sizes only,
# keeping the paper's recipe (schedules, loss weights, augmentations, token lengths, sampling):
# - U-Nets: Table 8's at half the base width (`_unets`; 256 -> 128, the vocoder's 128 -> 64), the
#   same depths, strides and attention: about a quarter of the parameters and of the FLOPs per sample.
# - 10 s clips (the generators' whole clip; 32,000 samples at 3.2 kHz, 1,000 log-mel frames) and
#   crops of the same share of a clip as the paper's, 1-1.33 s: a third of the length.
#   Per example, forward and backward (torch FLOP counter, python bench/small_preset.py): wave
#   generator 0.170 TFLOP (full 1.95), cascader 0.118 (1.33), spectrogram generator 0.042 (0.40),
#   vocoder 0.042 (0.50), super-res 0.157 (1.88).
# - Batch: 16 per pass, accumulated to 256 per step (512 for super-res, the paper's 2:1).
# - Steps for about a day: a 24 GB card of ~125 TFLOP/s bfloat16 peak (A10, L4; an RTX 4090 has
#   more) at the ~10% of peak these U-Nets reach on an H100 (bench/results_gpu_train_step_h100.txt)
#   does ~12.5 TFLOP/s, 1.08e18 FLOP a day: 1.08e18 / (0.170e12 * 256) = 25k steps for the wave
#   generator, 35k cascader, 100k spectrogram generator and vocoder, 13.5k super-res (at 512).
#   An estimate from FLOPs, not a GPU measurement; the warm-up (2k steps), the cosine's end (the
#   last step) and the EMA (0.9995, a ~2k-step horizon) are sized to those runs.

# Section 4.1's recipe, the same for every stage.
_RECIPE = dict(
    batch=ByScale(toy=16, small=16, full=8),
    lr=ByScale(toy=1e-3, small=1e-4, full=1e-4),
    warmup=ByScale(toy=100, small=2_000, full=10_000),
    lr_end=ByScale(toy=None, small=None, full=2_500_000),
    ema_decay=ByScale(toy=0.999, small=0.9995, full=0.9999),
    # Half of the toy examples see their conditioning clean: in a short run the paper's t ~ U[0, t_max]
    # leaves too few examples of the clean input that inference gives (data.augment_conditioning).
    clean_share=ByScale(toy=0.5, small=0.0, full=0.0),
    clip_seconds=ByScale(toy=4.0, small=10.0, full=30.0),
    clip=diffusion.DEFAULT_CLIP_PERCENTILE,
    sampler="ancestral",
    channels=1,
    ode_steps=0,
    keep_band=False,
    project=1.0,
    mel_fit=0,
)
MEL_FIT_ROUNDS = 10         # the toy vocoder's projection: rounds of data.fit_to_mel (mel_projection)
# Toy stages sample with DPM-Solver++(2M) (Lu et al. 2022; diffusion.dpmpp_2m_sample) at these step
# counts; `steps` stays eq. 4's (audio in, `--STAGE-sampler ancestral`). Chosen on bench/adherence.py's
# prompts at seed 0 (bench/results_sampling.md): each path's pairs stayed at 90% or more per kind, at
# a quarter (waveform path) and under half (spectrogram path) of eq. 4's CPU time; the vocoder's 6 and
# super-res's 4 once the vocoder's projection kept its estimates' detail (the judge's tune set and the
# tuning pairs as at 8 and 5). `small` and `full` keep the paper's eq. 4.
def _toy_ode(steps):
    return dict(sampler=ByScale(toy="dpmpp-2m", small="ancestral", full="ancestral"),
                ode_steps=ByScale(toy=steps, small=0, full=0))


# The cascaders' and the vocoder's crops: 3-4 s at full (super-res: not stated, the cascader's), and
# the same share of a 4 s toy clip.
_CROPS = ByScale(toy=(0.4, 0.533), small=(1.0, 1.333), full=(3.0, 4.0))

PRESETS = {
    "wave-generator": dict(
        _RECIPE, output="wave", sample_rate=3200, frame_rate=3200, cond_rate=0, aligned=False,
        token_len=ByScale(toy=32, small=64, full=64),
        unet=_unets(
            toy=UNetConfig(base_dim=16, kernel_size=5, strides=(4, 4, 4, 4), channel_mults=(2, 2, 4, 8),
                           blocks=(2, 2, 1, 2), self_attn=(F, F, F, T), cross_attn=(F, F, T, T), heads=4,
                           in_channels=1, text_dim=TOY_TEXT_DIM),
            full=UNetConfig(base_dim=256, kernel_size=7, strides=(4,) * 6, channel_mults=(1, 1, 2, 3, 4, 4),
                            blocks=(3, 3, 3, 4, 4, 4), self_attn=(F, F, F, T, T, T),
                            cross_attn=(F, F, F, T, T, T), heads=8, in_channels=1, text_dim=FULL_TEXT_DIM)),
        crop_seconds=(), loss_weighting="unit",
        schedule=ByScale(toy=shifted("cosine"), small="cosine", full="cosine"),
        augmentation=None,
        train_steps=ByScale(toy=5500, small=25_000, full=1_600_000),
        accumulate_to=ByScale(toy=0, small=256, full=2048),
        steps=ByScale(toy=200, small=1000, full=1000),      # toy: chosen by bench/adherence.py (tempo pairs)
        step_schedule="front-heavy", gamma=0.0, w=10.0, **_toy_ode(50)),
    "cascader": dict(
        _RECIPE, output="wave", sample_rate=16000, frame_rate=16000, cond_rate=3200, aligned=False,
        token_len=ByScale(toy=32, small=64, full=64),
        unet=_unets(
            toy=UNetConfig(base_dim=16, kernel_size=5, strides=(4, 4, 4), channel_mults=(2, 2, 4),
                           blocks=(2, 2, 1), self_attn=(F, F, F), cross_attn=(F, F, T), heads=4,
                           in_channels=1, cond_channels=1, text_dim=TOY_TEXT_DIM, aug_level=True),
            full=UNetConfig(base_dim=256, kernel_size=7, strides=(4,) * 5, channel_mults=(1, 1, 2, 3, 4),
                            blocks=(3, 3, 4, 6, 6), self_attn=(F,) * 5, cross_attn=(F, F, F, T, T), heads=8,
                            in_channels=1, cond_channels=1, text_dim=FULL_TEXT_DIM, aug_level=True)),
        crop_seconds=_CROPS, loss_weighting="unit",
        schedule=ByScale(toy=shifted("linear"), small="linear", full="linear"),
        augmentation=Augmentation(t_max=0.5, blur="1d", sigma_range=(0.1, 5.0), blur_size=10),
        train_steps=ByScale(toy=3000, small=35_000, full=460_000),
        accumulate_to=ByScale(toy=0, small=256, full=2048),
        steps=ByScale(toy=40, small=800, full=800),        # toy: chosen by bench/adherence.py
        step_schedule="front-heavy", gamma=1.0, w=5.0, **_toy_ode(8)),
    "spec-generator": dict(
        _RECIPE, output="spec", sample_rate=16000, frame_rate=MEL_FPS, cond_rate=0, aligned=False,
        token_len=ByScale(toy=48, small=96, full=96),
        # toy base >= 80: the entry convolution is x_t's only way in, and a base narrower than the
        # 80 mel channels cannot pass x_t through.
        unet=_unets(
            toy=UNetConfig(base_dim=96, kernel_size=5, strides=(2, 2, 2), channel_mults=(1, 1, 1),
                           blocks=(1, 2, 2), self_attn=(F, F, T), cross_attn=(F, T, T), heads=4,
                           in_channels=80, text_dim=TOY_TEXT_DIM),
            full=UNetConfig(base_dim=256, kernel_size=9, strides=(4, 3, 2, 2, 2), channel_mults=(1, 2, 2, 3, 4),
                            blocks=(6,) * 5, self_attn=(F, F, F, T, T), cross_attn=(F, F, F, T, T), heads=8,
                            in_channels=80, text_dim=FULL_TEXT_DIM)),
        crop_seconds=(), loss_weighting="sigma2", schedule="linear",
        augmentation=None,
        train_steps=ByScale(toy=10_000, small=100_000, full=1_800_000),   # toy: why, bench/results_judge.md
        accumulate_to=ByScale(toy=0, small=256, full=2048),
        steps=ByScale(toy=50, small=2000, full=2000),
        step_schedule="back-heavy", gamma=0.0, **_toy_ode(50),
        w=ByScale(toy=3.0, small=5.0, full=5.0),           # toy: the log-mels follow their prompts better at w = 3
        # No dynamic clipping: it divides a saturated estimate towards 0, which for a log-mel is
        # -40 dB, and fills the silence (the floor, -1) with a haze; the paper gives no percentile.
        clip=0.0),
    "vocoder": dict(
        _RECIPE, output="wave", sample_rate=16000, frame_rate=16000, cond_rate=0, aligned=True,
        token_len=0,
        unet=_unets(
            toy=UNetConfig(base_dim=16, kernel_size=5, strides=(2, 4, 4, 5), channel_mults=(1, 2, 2, 4),
                           blocks=(2, 3, 2, 1), self_attn=(F,) * 4, cross_attn=(F,) * 4, heads=4,
                           in_channels=1, aligned_channels=80, aligned_rate=160, aug_level=True),
            full=UNetConfig(base_dim=128, kernel_size=5, strides=(2, 4, 4, 5), channel_mults=(1, 1, 2, 4),
                            blocks=(4,) * 4, self_attn=(F,) * 4, cross_attn=(F,) * 4, heads=8,
                            in_channels=1, aligned_channels=80, aligned_rate=160, aug_level=True)),
        crop_seconds=_CROPS, loss_weighting="unit",
        schedule=ByScale(toy=shifted("linear"), small="linear", full="linear"),
        augmentation=Augmentation(t_max=1.0, blur="2d", sigma_range=(0.2, 1.0), blur_size=5),
        train_steps=ByScale(toy=6000, small=100_000, full=840_000),
        accumulate_to=ByScale(toy=0, small=256, full=2048),
        steps=ByScale(toy=25, small=100, full=100),
        step_schedule="front-heavy", gamma=0.0, w=1.0, **_toy_ode(6),
        # toy: mel projection (GLA-Grad, Liu et al. 2024) at every step; see mel_projection.
        project=ByScale(toy=0.0, small=1.0, full=1.0), mel_fit=MEL_FIT_ROUNDS),
    "super-res": dict(
        _RECIPE, output="wave", sample_rate=24000, frame_rate=24000, cond_rate=16000, aligned=False,
        token_len=0,
        unet=_unets(
            toy=UNetConfig(base_dim=16, kernel_size=5, strides=(4, 4, 4), channel_mults=(1, 2, 4),
                           blocks=(2, 2, 1), self_attn=(F,) * 3, cross_attn=(F,) * 3, heads=4,
                           in_channels=1, cond_channels=1, aug_level=True),
            full=UNetConfig(base_dim=256, kernel_size=7, strides=(4,) * 4, channel_mults=(1, 1, 2, 2),
                            blocks=(4,) * 4, self_attn=(F,) * 4, cross_attn=(F,) * 4, heads=8,
                            in_channels=1, cond_channels=1, aug_level=True)),
        crop_seconds=_CROPS, loss_weighting="unit",
        schedule=ByScale(toy=shifted("linear"), small="linear", full="linear"),
        augmentation=Augmentation(t_max=1.0),   # the paper names no blur for super-res
        train_steps=ByScale(toy=3000, small=13_500, full=270_000),
        accumulate_to=ByScale(toy=0, small=512, full=4096),
        steps=ByScale(toy=15, small=800, full=800),
        step_schedule="front-heavy", gamma=0.0, w=1.0, **_toy_ode(4),
        keep_band=True),                        # both scales; see keep_input_band
}

# Stereo super-res (not in the paper, whose cascade ends in mono): the mono 16 kHz output in,
# stereo 24 kHz out. The U-Net makes two channels, mid M = (L + R) / 2 and side S = (L - R) / 2,
# from the mono input, with super-res's U-Net and recipe otherwise (in_channels = 2).
# Why mid and side rather than left and right: the mid is what the mono super-res makes (the
# mix-down of the training clip), so its band below 8 kHz is the input exactly (keep_input_band
# on the mid alone), and the mix-down (L + R) / 2 = M is the mono cascade's output by
# construction, whatever the side holds; the side is the one new thing the stage learns (the
# place of each sound, the room), and a centred source costs it nothing (S = 0). With L and R
# the network would have to make the same low band twice, and the mono output would only
# approximately survive a mix-down. L = M + S, R = M - S (mid_side_to_lr).
PRESETS[STEREO] = dict(
    PRESETS["super-res"], channels=2,
    unet=ByScale(**{scale: replace(u, in_channels=2) for scale, u in PRESETS["super-res"]["unet"].items()}),
    train_steps=ByScale(toy=1500, small=13_500, full=270_000),      # toy: 33 min on a busy 2-core CPU
    sampler="ancestral", ode_steps=0)   # eq. 4 at 15 steps: its placement was measured with it

MEL_PROJECTION_PEAK = 0.9


def _check(stage, scale):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def stage_spec(stage, scale="toy") -> StageSpec:
    """Training and inference settings of `stage` at `scale`: its column of PRESETS."""
    _check(stage, scale)
    row = PRESETS[stage]
    return StageSpec(name=stage, **{f.name: row[f.name][scale] if isinstance(row[f.name], ByScale) else row[f.name]
                                    for f in fields(StageSpec) if f.name != "name"})


def unet_config(stage, scale="toy", text_dim=None) -> UNetConfig:
    """The U-Net of `stage` at `scale` ("full" is Table 8); text_dim overrides the T5 width."""
    spec = stage_spec(stage, scale)
    cfg = spec.unet
    if text_dim is not None and cfg.text_dim:
        cfg = replace(cfg, text_dim=text_dim)
    return replace(cfg, data_std=DATA_STD[spec.output], schedule=spec.schedule)


def parameter_counts(scale="full"):
    """{stage: parameter count}, built on the meta device (no memory, no time)."""
    counts = {}
    for stage in STAGES:
        with torch.device("meta"):
            counts[stage] = count_parameters(UNet1D(unet_config(stage, scale)))
    return counts


PAPER_PARAMS = {"wave-generator": 724e6, "cascader": 487e6, "spec-generator": 745e6, "vocoder": 25.7e6, "super-res": 81e6}


def print_presets():
    """The settings that differ between scales, per stage: one line per setting, one column per scale."""
    counts = {scale: parameter_counts(scale) for scale in SCALES}
    for stage in STAGES:
        sizes = "  ".join(f"{scale}={counts[scale][stage] / 1e6:.2f}M" for scale in SCALES)
        print(f"\n{stage}\n  {'U-Net params':14s} {sizes}")
        specs = [stage_spec(stage, scale) for scale in SCALES]
        for f in fields(StageSpec):
            values = [getattr(s, f.name) for s in specs]
            if f.name not in ("name", "unet") and len(set(map(repr, values))) > 1:
                print(f"  {f.name:14s} " + "  ".join(f"{scale}={v}" for scale, v in zip(SCALES, values)))


# ------------------------------------------------------------------------------------------------
# The wiring of each stage's inputs (Figure 1, section 3.3)

def low_fidelity(wave, rate, low_rate):
    """The cascaders' conditioning: the clip taken down to low_rate, then FFT-up-sampled back.

    Whole clips in, whole clips out: FFT resampling treats the clip as periodic, so a crop taken
    before resampling would wrap its end onto its start; resample first, crop after.
    wave: [... x T] at `rate`.
    """
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

    :param wave: the clip, float32 [T] at spec.sample_rate (the whole clip, uncropped); [2 x T]
        left and right for a stereo stage (spec.channels = 2).
    :param crop: the batch's crop length in samples (0 = the whole clip, the generators).
    :param rng: a numpy Generator for the crop position.
    :return: dict with "x0" [C x T'] (audio, mid and side, or log-mel), and "cond" [1 x T'] (the
        up-sampled low-fidelity audio of the cascaders; of the mid for stereo) or "aligned"
        [80 x T'/160] (the vocoder's log-mel).
    """
    if not crop:                                            # generators: the whole clip
        wave = fit_length(wave, round(spec.clip_seconds * spec.sample_rate))
    if spec.output == "spec":
        return {"x0": log_mel(wave, spec.sample_rate)}      # (80, frames)
    x0 = lr_to_mid_side(wave) if spec.channels == 2 else wave[None]      # (C, T)
    signals, hops = [x0], [1]
    if spec.cond_rate:                                      # the input: the (mid's) low band
        signals.append(low_fidelity(x0[0], spec.sample_rate, spec.cond_rate)[None])
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
    if not spec.crop_seconds:
        return 0
    return draw_crop_length(*spec.crop_seconds, spec.sample_rate, rng, multiple=spec.sample_rate // MEL_FPS)


# ------------------------------------------------------------------------------------------------
# The whole pipeline at inference (section 3.3, Figure 1; settings of Tables 3 and 7)

PIPELINES = {"wave": ("wave-generator", "cascader", "super-res"),
             "spec": ("spec-generator", "vocoder", "super-res")}
# What sample.py and app.py run unless told: at toy scale the spectrogram path is the one that is heard
# as prompted more often, hisses less and costs half the CPU (README, Results).
DEFAULT_PIPELINE = "spec"


@dataclass
class Sampling:
    """Per-stage inference knobs (Table 3); a field left at None takes the stage's default."""
    sampler: str = None        # a name of diffusion.SAMPLERS ("ancestral" is eq. 4)
    steps: int = None          # number of denoising steps
    schedule: str = None       # a name of diffusion.STEP_SCHEDULES, or a file of deltas
    gamma: float = None        # eq. 4's stochasticity, in [0, 1]
    w: float = None            # CFG scale (1 = none)
    clip: float = None         # dynamic-clipping percentile of |x0| (0 = no clipping)
    aug: float = None          # noise time of the conditioning input (cascaders, vocoder); default 0 = clean
    keep_band: int = None      # 1: the output keeps the input's band (cascaders; super-res's default), 0: not
    project: float = None      # vocoder: project x_0 estimates onto the log-mel's magnitude at t > this; 1 = never
    mel_fit: int = None        # vocoder: Richardson-Lucy rounds fitting the estimate's own magnitude (0: the log-mel's)


def resolve_sampler(spec: StageSpec, knobs: Sampling):
    """The stage's sampler: the user's knob over the preset's (a name of diffusion.SAMPLERS)."""
    name = knobs.sampler or spec.sampler
    if name not in diffusion.SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(diffusion.SAMPLERS)}")
    return name


def resolve_sampling(spec: StageSpec, knobs: Sampling, sampler=None):
    """(deltas, gamma, w, percentile) for a stage: the user's knobs over Table 3's defaults.

    The default number of steps depends on the sampler (`sampler`, else `resolve_sampler`): eq. 4
    takes spec.steps, the ODE samplers spec.ode_steps where set.
    """
    sampler = sampler or resolve_sampler(spec, knobs)
    steps = knobs.steps or (spec.ode_steps if sampler != "ancestral" and spec.ode_steps else spec.steps)
    name = knobs.schedule or spec.step_schedule
    if name in diffusion.STEP_SCHEDULES:
        deltas = diffusion.step_schedule(name, steps, stage=TABLE7_ROW.get(spec.name, spec.name))
    else:
        deltas = diffusion.load_deltas(name)
    gamma = spec.gamma if knobs.gamma is None else knobs.gamma
    w = spec.w if knobs.w is None else knobs.w
    clip = spec.clip if knobs.clip is None else knobs.clip
    return deltas, gamma, w, (clip or None)


class StageModel:
    """One trained stage for inference: the EMA U-Net and its spec, read from a checkpoint.

    With `stage` given, a checkpoint of another stage is refused (checks.InputError naming both), as
    are an unknown scale and EMA weights holding NaN or infinity.
    """

    def __init__(self, path, device="cpu", dtype=None, stage=None):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        check_identity(ckpt, path, stage)
        if ckpt["stage"] not in STAGES or ckpt["scale"] not in SCALES:
            raise InputError(f"{path}: unknown stage {ckpt['stage']!r} or scale {ckpt['scale']!r}")
        check_finite_state(ckpt["ema"], f"{path} ({ckpt['stage']} EMA weights)")
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

        # Everything but x_t and t is the same at every step: doubled once, here.
        B = text.shape[0]
        both = {k: torch.cat([v, v]) for k, v in route.items()}
        hide = torch.cat([drop if drop is not None else torch.zeros(B, dtype=torch.bool, device=text.device),
                          torch.ones(B, dtype=torch.bool, device=text.device)])   # second half: text hidden
        text2, mask2 = torch.cat([text, text]), torch.cat([text_mask, text_mask])

        def pair(x, t):
            eps = run(torch.cat([x, x]), torch.cat([t, t]), text=text2, text_mask=mask2, drop_text=hide, **both)
            return eps[:B], eps[B:]
        return pair


def limit_peaks(y, peak, width):
    """y (B, C, T) with a gain <= 1 that keeps every |sample| <= peak, lowered only within `width`
    samples of where a sample would exceed it (1 elsewhere), and changing over `width` samples.

    The gain g0 = peak / max(|y|, peak) is replaced by the mean, over `width` + 1 samples, of its
    minimum over 2 `width` + 1: at every t that mean is <= g0(t), so the peak holds exactly. One
    loud moment then quiets its neighbourhood, not the whole clip (a long-form clip is one clip
    of many windows, and a whole-clip gain let a single loud frame push 30 s down by 60 dB).
    """
    gain = peak / y.abs().amax(dim=1, keepdim=True).clamp(min=peak)           # (B, 1, T)
    if bool((gain == 1).all()):
        return y
    low = _running_min(gain, width)
    edges = (width // 2, width - width // 2)             # the end values repeated: still <= g0 there
    total = torch.nn.functional.pad(low.double(), edges, mode="replicate").cumsum(-1)
    total = torch.nn.functional.pad(total, (1, 0))
    smooth = ((total[..., width + 1:] - total[..., :-width - 1]) / (width + 1)).to(y.dtype)
    return (y * smooth).clamp(-peak, peak)          # the mean's float rounding: a few parts in 1e6


def _running_min(x, width):
    """min of x (B, 1, T) over [t - width, t + width] (values past the ends count as 1), in O(T):
    van Herk / Gil-Werman, running minima within blocks of the window's length, forward and back."""
    k, T = 2 * width + 1, x.shape[-1]
    n = -(-(T + 2 * width) // k) * k
    padded = torch.nn.functional.pad(x, (width, n - T - width), value=1.0).reshape(*x.shape[:-1], n // k, k)
    ahead = padded.cummin(-1).values.reshape(*x.shape[:-1], n)                   # block start .. i
    behind = padded.flip(-1).cummin(-1).values.flip(-1).reshape(*x.shape[:-1], n)  # i .. block end
    return torch.minimum(behind[..., :T], ahead[..., k - 1:k - 1 + T])


MEL_PROJECTION_LIMITER = 0.05    # seconds over which mel_projection's peak limit acts


def mel_projection(mel, peak=MEL_PROJECTION_PEAK, fit=0):
    """x_0 -> x_0 with the STFT magnitude of the log-mel `mel` (B, 80, F) and its own phase, kept
    under `peak` by `limit_peaks` (GLA-Grad, Liu et al. 2024; not in Noise2Music).

    One Griffin-Lim round per sampling step (data.project_to_mel). The toy vocoder alone renders a
    log-mel too quietly and loses a flute's partials: a sustained partial's phase is not in the
    log-mel, and its small U-Net cannot find it in x_t. Projected, its output has the loudness and
    pitch the log-mel implies. The peak limit keeps clips whose log-mel is louder than any training
    clip from clipping. `--vocoder-project 1` samples as the paper's wiring would.

    With `fit` rounds (the toy preset's MEL_FIT_ROUNDS) the magnitude is not the log-mel's smooth
    one, which fills the space between partials with the band's mean power (on generated clips,
    17-36 dB more hiss than real clips have in each band above 1 kHz), but the estimate's own,
    fitted to the log-mel (data.fit_to_mel).
    """
    magnitude = None if fit else mel_magnitude(mel)                # the same at every step

    def project(x0):
        y = project_to_mel(x0, mel, None if fit else magnitude.to(x0.dtype), fit)
        return limit_peaks(y, peak, round(MEL_PROJECTION_LIMITER * MEL_SAMPLE_RATE))
    return project


def run_stage(stage: StageModel, knobs: Sampling, shape, generator, text=None, text_mask=None,
              unconditional=None, progress=None, given=None, **route):
    """Sample one stage: x_T ~ N(0, I) of `shape`, then its sampler with CFG and dynamic clipping.

    The sampler is eq. 4 (`diffusion.sample`) unless the stage's preset or knobs name another
    (`resolve_sampler`); CFG and clipping wrap eps_fn, so every sampler sees the guided, clipped x_0.
    With `given` (audio in: known regions, SDEdit) the stage always samples with eq. 4 at its eq. 4
    step count, whatever the sampler knob says: replacement and RePaint re-noise x_s at every step,
    which a deterministic multistep solver does not expect.

    The vocoder, with a projection time below 1 (StageSpec.project, Sampling.project), replaces each
    x_0 estimate at t above it by its projection onto the log-mel's magnitude (`mel_projection`).

    :param unconditional: a (B,) bool tensor: examples generated without text (empty prompts).
    :param given: a `Given` (audio in: a known region or an SDEdit start), or None.
    """
    spec = stage.spec
    sampler = "ancestral" if given is not None else resolve_sampler(spec, knobs)
    deltas, gamma, w, percentile = resolve_sampling(spec, knobs, sampler)
    drop = unconditional.to(stage.device) if unconditional is not None and text is not None else None
    keep = spec.keep_band if knobs.keep_band is None else bool(knobs.keep_band)
    clean = route.get("cond") if keep and spec.cond_rate else None
    project = spec.project if knobs.project is None else knobs.project
    fit = spec.mel_fit if knobs.mel_fit is None else knobs.mel_fit
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
        eps = diffusion.projected_eps_fn(eps, spec.schedule, mel_projection(mel, fit=fit), project)
    if given is None:
        x = diffusion.run_sampler(sampler, eps, x_T, deltas, spec.schedule, gamma, generator, progress)
    else:
        x = given.sample(eps, x_T, deltas, spec.schedule, gamma, generator, progress)
    if not torch.isfinite(x).all():             # an error naming the stage, never a silent WAV
        raise FloatingPointError(f"the {spec.name} stage produced NaN or infinite values")
    if spec.output == "spec":   # a log-mel holds at most DB_MAX (data.normalize_db); beyond, its power overflows
        x = x.clamp(max=1.0)    # float32 (a strongly guided inpainting can reach ~8, 430 dB: NaN in the vocoder)
    x = x if clean is None else keep_input_band(x, clean, spec.sample_rate, spec.cond_rate)
    return x if given is None else given.keep_known(x)


def lr_to_mid_side(x):
    """[... x 2 x T] left, right -> mid (L + R) / 2, side (L - R) / 2 (numpy or torch)."""
    left, right = x[..., 0:1, :], x[..., 1:2, :]
    cat = np.concatenate if isinstance(x, np.ndarray) else torch.cat
    return cat([(left + right) / 2, (left - right) / 2], -2)


def mid_side_to_lr(x):
    """[... x 2 x T] mid, side -> left M + S, right M - S: the inverse of lr_to_mid_side."""
    mid, side = x[..., 0:1, :], x[..., 1:2, :]
    cat = np.concatenate if isinstance(x, np.ndarray) else torch.cat
    return cat([mid + side, mid - side], -2)


def final_audio(x):
    """The last stage's output as written: (B, 1, T) -> (B, T) mono; (B, 2, T) mid and side ->
    (B, 2, T) left and right."""
    return x[:, 0].cpu() if x.shape[1] == 1 else mid_side_to_lr(x).cpu()


def pipeline_stages(pipeline, stereo=False):
    """The stage names of `pipeline` (PIPELINES); with `stereo`, the last is the stereo super-res in
    place of super-res (sample.py --stereo)."""
    names = PIPELINES[pipeline]
    return names[:2] + (STEREO,) if stereo else names


def keep_input_band(out, cond, rate, cond_rate):
    """`out` with its spectrum below cond_rate / 2 (the input's Nyquist frequency) taken from `cond`.

    out, cond: [... x T] at `rate`; cond is the FFT-up-sampled low-fidelity input, which has
    nothing above cond_rate / 2. So the stage contributes only the band its input lacks (the
    low-frequency replacement of audio super-resolution models such as NU-Wave 2 and AudioSR;
    Noise2Music does not say). A diffusion model resynthesizes the whole signal, and the toy
    super-res adds onsets in the band it was given (bench/stage_tempo.py measures it);
    `--super-res-keep-band 0` samples as the paper's wiring alone would. A stereo output
    (B, 2, T) is mid and side: the mid alone takes the band, the side is left as made.
    """
    if out.shape[-2] > cond.shape[-2]:                      # stereo: (B, 2, T) mid, side
        mid = keep_input_band(out[..., :1, :], cond, rate, cond_rate)
        return torch.cat([mid, out[..., 1:, :]], -2)
    T = out.shape[-1]
    low = torch.fft.rfftfreq(T, 1.0 / rate, device=out.device) < cond_rate / 2
    spectrum = torch.where(low, torch.fft.rfft(cond.double(), dim=-1), torch.fft.rfft(out.double(), dim=-1))
    return torch.fft.irfft(spectrum, n=T, dim=-1).to(out.dtype)


def encode_prompts(text_encoder, prompts, spec, device):
    """T5 embeddings of prompts at a stage's token length: ((B, L, D), (B, L) bool mask)."""
    tokenizer, encoder = text_encoder
    ids, mask = tokenizer(list(prompts), spec.token_len)
    with torch.no_grad():
        emb = encoder(ids.to(encoder.embed.weight.device), mask.to(encoder.embed.weight.device))
    return emb.float().to(device), mask.to(device)


def _unconditional(prompts):
    """(B,) bool: the empty prompts, generated without text."""
    return torch.tensor([p.strip() == "" for p in prompts])


def stage_lengths(first: StageSpec, seconds):
    """(n1, n2, n3): the lengths of a pipeline's three outputs for a clip of `seconds`, `first` its
    generator (n1 frames of log-mel or samples at 3.2 kHz; n2 at 16 kHz; n3 at 24 kHz).

    The 24 kHz output has n3 = round(seconds * 24000) samples; each earlier stage is made just long
    enough that its up-sampled output (fft_resample floors T * new / old; the vocoder makes 160
    samples per frame) covers the next stage's length, which then cuts it. Rounding each stage's
    length on its own would leave the up-sampled input one sample short for ~40% of lengths.
    """
    n3 = round(seconds * 24000)
    n2 = -(-n3 * 16000 // 24000)                        # ceil
    n1 = -(-n2 * first.frame_rate // 16000)
    return n1, n2, n3


def first_stage(stage: StageModel, text_encoder, prompts, seconds, knob, generator, progress=None, given=None):
    """The generator: text -> (B, 1, T) 3.2 kHz audio (wave generator) or (B, 80, F) log-mel.
    `given` (audio in): a `Given` for run_stage, as in the stages below."""
    spec = stage.spec
    text, mask = encode_prompts(text_encoder, prompts, spec, stage.device)
    channels = 80 if spec.output == "spec" else 1
    shape = (len(prompts), channels, stage_lengths(spec, seconds)[0])
    return run_stage(stage, knob, shape, generator, text, mask, _unconditional(prompts), progress, given=given)


def second_stage(stage: StageModel, first: StageSpec, x1, text_encoder, prompts, seconds, knob, generator,
                 progress=None, given=None):
    """To 16 kHz: the cascader (x1, FFT-up-sampled, stacked with x_t) or the vocoder (x1 the aligned
    log-mel). x1 is the output of the stage `first`; returns (B, 1, T) at 16 kHz.
    `given` (audio in): a `Given` over the sampled length (the vocoder's: 160 samples per frame of x1)."""
    B, n2 = len(prompts), stage_lengths(first, seconds)[1]
    x1 = x1.to(stage.device)
    if stage.spec.aligned:
        return run_stage(stage, knob, (B, 1, x1.shape[-1] * 160), generator, progress=progress, given=given,
                         aligned=x1)[..., :n2]
    cond = fft_resample(x1, first.sample_rate, 16000)[..., :n2]
    text, mask = encode_prompts(text_encoder, prompts, stage.spec, stage.device)
    return run_stage(stage, knob, (B, 1, n2), generator, text, mask, _unconditional(prompts), progress,
                     given=given, cond=cond)


def third_stage(stage: StageModel, x2, seconds, knob, generator, progress=None, given=None):
    """Super-resolution: 16 kHz audio (B, 1, T), FFT-up-sampled and stacked with x_t, no text ->
    (B, 1, T') at 24 kHz, or (B, 2, T') mid and side for the stereo super-res. `given` (audio in): a
    `Given` over the output."""
    n3 = round(seconds * 24000)
    cond = fft_resample(x2, 16000, 24000)[..., :n3]
    return run_stage(stage, knob, (x2.shape[0], stage.spec.channels, n3), generator, progress=progress, given=given,
                     cond=cond)


def cascade_generate(stages, text_encoder, prompts, pipeline, seconds, seed, knobs, device="cpu",
                     progress=None, keep=None, timings=None, stereo=False):
    """Prompts in, 24 kHz audio out, through the three stages of `pipeline` (Figure 1).

    :param stages: {name: StageModel}; text_encoder: (tokenizer, encoder) of load_t5.
    :param knobs: {stage name: Sampling}.
    :param device: the stages' device (each stage runs where its StageModel was loaded).
    :param keep: a dict that receives each stage's output (3.2 kHz audio or log-mel, 16 kHz, 24 kHz audio)
        as soon as that stage ends (app.py shows them while the next stage runs).
    :param timings: a dict that receives each stage's wall-clock seconds.
    :param stereo: end in the stereo super-res (`stages` holds it) instead of super-res.
    :return: a (B, T) float tensor at 24 kHz; (B, 2, T) left and right with `stereo`.

    Longer than the generator's training clip, the generator runs in overlapping windows
    (`audio_generate`'s long-form; overlap DEFAULT_OVERLAP, at most half a window).
    """
    names = pipeline_stages(pipeline, stereo)
    first, second, third = (stages[n] for n in names)
    if seconds > first.spec.clip_seconds:
        task = AudioTask("long", overlap=min(DEFAULT_OVERLAP, first.spec.clip_seconds / 2))
        return audio_generate(stages, text_encoder, prompts, pipeline, seconds, seed, knobs, task,
                              device, progress, keep, timings, stereo)
    gen = torch.Generator().manual_seed(seed)
    bar = lambda name: progress and progress(name)
    done = _stage_done(timings, keep)

    x1 = first_stage(first, text_encoder, prompts, seconds, knobs[names[0]], gen, bar(names[0]))
    done(names[0], x1)
    x2 = second_stage(second, first.spec, x1, text_encoder, prompts, seconds, knobs[names[1]], gen, bar(names[1]))
    done(names[1], x2)
    x3 = third_stage(third, x2, seconds, knobs[names[2]], gen, bar(names[2]))
    done(names[2], x3)
    return final_audio(x3)


def _stage_done(timings, keep):
    """done(name, x) when a stage ends: adds the seconds since the previous stage ended (or since this
    call) to timings[name], and keeps a CPU copy of its output x in keep[name] (either dict may be None)."""
    clock = [time.perf_counter()]

    def done(name, x):
        now = time.perf_counter()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + now - clock[0]
        clock[0] = now
        if keep is not None:
            keep[name] = x.cpu()
    return done


# ------------------------------------------------------------------------------------------------
# Audio in: long-form, continuation, inpainting, audio-to-audio and text-guided up-sampling
#
# Every stage is a diffusion model over audio (or a log-mel) that a user can supply, so each mode
# is the cascade of `cascade_generate` with some stages told part of their output (`Given`):
#   - long-form (--seconds past the training length): the generator, whose bottom depths attend over
#     the whole clip and which was trained on clips of one length, runs in windows of that length;
#     each window's first `overlap` seconds are the end of the audio made so far, held as a known
#     region (the same mechanism as continuation), and only its new part is kept, so consecutive
#     windows share `overlap` seconds and join where the known part ends. The cascader / vocoder and
#     super-res then run once over the whole length: they have no self-attention (their U-Nets are
#     convolutions, the cascader's only attention is cross-attention to the text, which does not
#     depend on the audio's length; unet1d has no positional embedding), so any length is a length
#     they can serve, with no seams of their own;
#   - continuation: the same windows, starting after the given clip, whose end is the first window's
#     known region; every later stage keeps the given clip as a known region at its own rate;
#   - inpainting: one generator window around the region (the whole clip when it fits), the rest
#     known; every later stage keeps everything outside the region as known;
#   - audio-to-audio: SDEdit at the generator from the given clip (3.2 kHz audio or its log-mel),
#     the later stages as usual;
#   - up-sampling: no generator; the cascader (text-guided) on the clip taken to 3.2 kHz, then
#     super-res; or super-res alone for a clip of 16 kHz or more. Both keep the given band exactly
#     (keep_input_band, on for the cascader here unless --cascader-keep-band 0 says otherwise; a clip
#     between 3.2 and 16 kHz keeps all of its band, not only the 3.2 kHz input's), so the stages add
#     only the band the clip lacks.
# Known regions use replacement (diffusion.known_region_sample); in the generator, optionally with
# RePaint's resampling or reconstruction guidance (`KnownFit`); the later stages, led by their
# low-fidelity input, use plain replacement. The final 24 kHz output equals the given audio exactly
# on its known part.

GIVEN_RATE = 24000       # the given clip is held at the output rate
DEFAULT_OVERLAP = 2.0    # seconds of each long-form window that are the previous audio (bench/beyond.py's choice)
MODES = ("long", "continue", "inpaint", "init", "upsample")
# A log-mel of a clip cut where it ends has wrong last frames: the STFT pads the end by reflection
# (the last two of 100 fps frames differ from the longer clip's by 0.63 and 0.41 on average over the 80
# bins, against ~1e-9 for the frames before), which the generator, holding them as known, carried
# into a step at the join. So a continued clip's last 30 ms are not held at stage 1; the later
# stages, whose known part is the clip itself, still keep all of it. The generator, trained on such
# log-mels, makes a window's last frames the same way (its last frame step is about twice the
# others'), so a long-form window's last 30 ms are left to the next window too (generate_windows).
EDGE_SECONDS = 0.03


@dataclass(frozen=True)
class KnownFit:
    """How the generator fits what it makes to a known region (diffusion.known_region_sample)."""
    jump: int = 0                # RePaint's jump length (0: plain replacement)
    resample: int = 1            # RePaint's number of resamplings r
    guidance: float = 0.0        # the weight of reconstruction guidance (0: none)


@dataclass
class Given:
    """What one stage's sampler is told of its own output: a known region, or SDEdit's start."""
    known: torch.Tensor = None   # (1, C, T) the known x_0 (read where mask is True)
    mask: torch.Tensor = None    # (1, 1, T) bool, True where x_0 is known
    init: torch.Tensor = None    # (1, C, T) SDEdit's given x_0
    strength: float = 1.0        # SDEdit's start time
    fit: KnownFit = KnownFit()   # the known-region sampler's settings
    fade: int = 0                # samples (frames) of the unknown part next to the known one that cross-fade from
                                 # `known` (inpainting: `known` holds the replaced audio there too)

    def sample(self, eps, x_T, deltas, schedule, gamma, generator, progress):
        if self.init is not None:
            init = self.init.to(x_T.device, x_T.dtype).expand_as(x_T)
            return diffusion.sdedit_sample(eps, init, self.strength, deltas, schedule, gamma, generator, progress)
        return diffusion.known_region_sample(eps, x_T, deltas, schedule, gamma, self.known.to(x_T.device),
                                             self.mask.to(x_T.device), self.fit.jump, self.fit.resample, generator,
                                             progress, self.fit.guidance)

    def keep_known(self, x):
        """x with its known part set to the known audio exactly (after keep_input_band, say), and with
        `fade` > 0 the first and last `fade` samples of each unknown stretch cross-faded from `known`."""
        if self.mask is None:
            return x
        known = self.known.to(x.device, x.dtype)
        if self.fade <= 0:
            return torch.where(self.mask.to(x.device), known, x)
        weight = known_weight(self.mask[0, 0], self.fade).to(x.device, x.dtype)
        return weight * known + (1 - weight) * x


def known_weight(mask, fade):
    """(T,) weights: 1 on the known samples (mask True), a raised cosine falling from 1 to 0 over the
    `fade` samples of the unknown part next to a known one, 0 beyond."""
    T = mask.shape[-1]
    pos = torch.arange(T, dtype=torch.float64)
    inf = torch.full_like(pos, math.inf)
    before = pos - torch.cummax(torch.where(mask, pos, -inf), 0).values              # to the last known at or before
    after = torch.flip(torch.cummin(torch.flip(torch.where(mask, pos, inf), [0]), 0).values, [0]) - pos
    d = torch.minimum(before, after)                                                 # 0 on the known part
    return torch.where(d <= fade, 0.5 * (1 + torch.cos(math.pi * d / (fade + 1))), torch.zeros_like(d))


@dataclass
class AudioTask:
    """An audio-in request: sample.py's --seconds past the training length, --continue, --inpaint,
    --init and --upsample."""
    mode: str                    # one of MODES
    audio: torch.Tensor = None   # (T,) the given clip at GIVEN_RATE
    rate: int = GIVEN_RATE       # the given file's own rate (up-sampling picks its stages by it)
    region: tuple = ()           # inpainting: (start, end) seconds
    strength: float = 1.0        # audio-to-audio: SDEdit's t
    overlap: float = DEFAULT_OVERLAP
    fit: KnownFit = KnownFit()   # the generator's known-region sampler
    edge: float = EDGE_SECONDS   # long-form, continuation: seconds at the end of a window (or clip) left to the generator

    @property
    def seconds(self):
        return 0.0 if self.audio is None else self.audio.shape[-1] / GIVEN_RATE

    def known_seconds(self):
        """The known intervals of the output, in seconds: [(start, end), ...]."""
        if self.mode == "continue":
            return [(0.0, self.seconds)]
        if self.mode == "inpaint":
            return [(0.0, self.region[0]), (self.region[1], self.seconds)]
        return []


def at_stage(spec, wave):
    """The given 24 kHz audio (..., T) as `spec`'s stage outputs it: (..., 1, T') audio at its rate,
    or (..., 80, frames) log-mel."""
    wave16 = fft_resample(wave, GIVEN_RATE, 16000)
    if spec.output == "spec":
        return log_mel(wave16, 16000)
    return fft_resample(wave, GIVEN_RATE, spec.sample_rate)[..., None, :]


def known_mask(intervals, rate, length):
    """(1, 1, length) bool: True at the samples (or frames) of `rate` inside any (start, end) second interval."""
    pos = torch.arange(length, dtype=torch.float64) / rate
    mask = torch.zeros(length, dtype=torch.bool)
    for start, end in intervals:
        mask |= (pos >= start) & (pos < end)
    return mask[None, None]


def fit_tensor(x, length):
    """Zero-pad or cut the last axis of a tensor to `length` (the padding is never read: see known_at)."""
    return x[..., :length] if x.shape[-1] >= length else torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def pad_edge(x, length):
    """Cut the last axis of x (B, C, T) to `length`, or extend it by repeating its last sample (frame).

    A clip resampled to a stage's rate can be a sample (a log-mel frame) shorter than stage_lengths
    asks; repeating its edge, not zeros, keeps a stage's input free of a silent tail.
    """
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]), mode="replicate")


# Inpainting's later stages keep the clip outside the region exactly, and their own audio starts at the
# region's edge: the first and last 20 ms of the region cross-fade from the replaced audio to theirs.
INPAINT_FADE_SECONDS = 0.02


def known_at(spec, task, n, fit=KnownFit()):
    """The task's known audio as a `Given` for the stage `spec` over n samples (frames), or None.

    The mask is the task's known intervals, but only where the given clip, taken to the stage's rate,
    has a sample: a resampled clip can end up to a sample (frame) before its interval does, and
    that position is left to the sampler rather than held as zero.
    """
    intervals = task.known_seconds()
    if not intervals:
        return None
    x = at_stage(spec, task.audio)[None]                                            # (1, C, T')
    mask = known_mask(intervals, spec.frame_rate, n) & (torch.arange(n) < x.shape[-1])
    fade = round(INPAINT_FADE_SECONDS * spec.frame_rate) if task.mode == "inpaint" and spec.output == "wave" else 0
    return Given(known=pad_edge(x, n), mask=mask, fit=fit, fade=fade)


def generate_windows(stage, knobs, batch, total, generator, prefix=None, overlap=DEFAULT_OVERLAP, fit=KnownFit(),
                     progress=None, edge=0, **text):
    """The generator's output over `total` samples (frames), in windows of its training length L.

    Window k covers [start, start + L) with start = (length done so far) - overlap: its first part
    is the end of the output so far, held as a known region (sampled as `fit` says),
    and the rest is kept but for its last `edge` samples (frames), unless it ends the output: the
    generator makes a clip's last frames as a clip's end looks (see EDGE_SECONDS), so the next
    window, whose known part would end on them, regenerates them instead.

    :param prefix: (1, C, P) known start of the output, or None.
    :param overlap: samples (frames) of each window that are the previous output; less than L.
    :param edge: samples (frames) at the end of each window that are not kept (at most L - 1 - overlap).
    :param text: run_stage's text, text_mask, unconditional.
    :return: (batch, C, total).
    """
    L, C = stage.spec.length, 80 if stage.spec.output == "spec" else 1
    if not 0 <= overlap < L:
        raise ValueError(f"the overlap must be in [0, {L}) samples, got {overlap}")
    edge = max(min(edge, L - 1 - overlap), 0)
    out = torch.zeros(batch, C, total, device=stage.device)
    done = 0
    if prefix is not None:
        done = min(prefix.shape[-1], total)
        out[..., :done] = prefix[..., :done].to(out)
    while done < total:
        start = max(done - overlap, 0)
        known = fit_tensor(out[..., start:start + L], L)                 # (B, C, L)
        mask = (torch.arange(L, device=out.device) < done - start)[None, None]
        given = Given(known=known, mask=mask, fit=fit) if done > start else None
        x = run_stage(stage, knobs, (batch, C, L), generator, progress=progress, given=given, **text)
        end = start + L if start + L >= total else start + L - edge
        end = min(end, total)
        out[..., done:end] = x[..., done - start:end - start]
        done = end
    return out


def _window_around(region, clip_seconds, window_seconds):
    """(start, end) seconds of a window of window_seconds that holds `region`, inside the clip."""
    if clip_seconds <= window_seconds:
        return 0.0, clip_seconds
    middle = (region[0] + region[1]) / 2
    start = min(max(middle - window_seconds / 2, 0.0), clip_seconds - window_seconds)
    return start, start + window_seconds


def generate_first(stage, text_encoder, prompts, task, seconds, knob, generator, progress=None):
    """Stage 1 of an audio-in task: (B, C, n1) 3.2 kHz audio or log-mel, n1 of `stage_lengths`."""
    spec, rate = stage.spec, stage.spec.frame_rate
    n = stage_lengths(spec, seconds)[0]
    B = len(prompts)
    if task.mode == "init":              # SDEdit: the plain generator, started from the given clip
        given = Given(init=pad_edge(at_stage(spec, task.audio)[None], n), strength=task.strength)
        return first_stage(stage, text_encoder, prompts, seconds, knob, generator, progress, given=given)
    emb, mask = encode_prompts(text_encoder, prompts, spec, stage.device)
    text = dict(text=emb, text_mask=mask, unconditional=_unconditional(prompts))
    if task.mode in ("long", "continue"):
        prefix = None
        edge = math.ceil(task.edge * rate)
        if task.mode == "continue":      # the clip's last task.edge seconds are regenerated (see EDGE_SECONDS)
            prefix = at_stage(spec, task.audio)[None]
            prefix = prefix[..., :max(prefix.shape[-1] - edge, 1)]
        return generate_windows(stage, knob, B, n, generator, prefix, round(task.overlap * rate), task.fit,
                                progress, edge, **text)
    # inpainting: one generator window around the region
    given = known_at(spec, task, n, task.fit)
    a, b = _window_around(task.region, seconds, spec.clip_seconds)
    ia, ib = round(a * rate), min(round(a * rate) + round((b - a) * rate), n)
    window = Given(known=given.known[..., ia:ib], mask=given.mask[..., ia:ib], fit=task.fit)
    x = run_stage(stage, knob, (B, given.known.shape[1], ib - ia), generator, progress=progress, given=window, **text)
    out = given.known.expand(B, -1, -1).clone().to(x.device)
    out[..., ia:ib] = x
    return out


def task_seconds(task, seconds, generator_seconds):
    """The output length of a task: the given clip's for inpainting, audio-to-audio and up-sampling;
    for continuation `seconds` if given, else the clip plus one generator window."""
    if task.mode in ("inpaint", "init", "upsample"):
        return task.seconds
    if task.mode == "continue":
        return seconds or task.seconds + generator_seconds
    return seconds


def task_stages(task, pipeline, stereo=False):
    """The stages `audio_generate` runs for `task`, in cascade order: up-sampling runs the waveform
    path without its generator, and from 16 kHz or more super-res alone."""
    if task.mode != "upsample":
        return pipeline_stages(pipeline, stereo)
    names = pipeline_stages("wave", stereo)
    return names[2:] if task.rate >= 16000 else names[1:]


def audio_generate(stages, text_encoder, prompts, pipeline, seconds, seed, knobs, task: AudioTask,
                   device="cpu", progress=None, keep=None, timings=None, stereo=False):
    """Prompts (and the task's audio) in, 24 kHz audio out: `cascade_generate` for the audio-in modes.

    Stage 1 is `generate_first`; stages 2 and 3 are the plain pipeline's `second_stage` and
    `third_stage` over the whole length (no windows: see the note above), each holding the task's
    known audio at its own rate. Every stage's length comes from `stage_lengths`, as in
    `cascade_generate`, so no stage's input ends in padding.

    :param stages: {name: StageModel} of `pipeline` (up-sampling: of the waveform path).
    :param task: what is given and what to do (see `AudioTask`, and the note above `Given`).
    :param seconds: the output length for "long" and "continue" (0: see `task_seconds`).
    :param keep, timings, stereo: as for `cascade_generate`.
    :return: a (B, T) float tensor at 24 kHz; (B, 2, T) left and right with `stereo`.
    """
    names = pipeline_stages("wave" if task.mode == "upsample" else pipeline, stereo)
    runs = task_stages(task, pipeline, stereo)
    first = stages[names[0]].spec if names[0] in stages else stage_spec(names[0])
    second, third = stages[names[1]], stages[names[2]]
    seconds = task_seconds(task, seconds, first.clip_seconds)
    n1, n2, n3 = stage_lengths(first, seconds)
    gen, B = torch.Generator().manual_seed(seed), len(prompts)
    bar = lambda name: progress and progress(name)
    done = _stage_done(timings, keep)

    if names[0] in runs:
        x1 = generate_first(stages[names[0]], text_encoder, prompts, task, seconds, knobs[names[0]], gen, bar(names[0]))
        done(names[0], x1)
    if task.mode == "upsample" and knobs[names[1]].keep_band is None:     # the user's band is kept, not re-made
        knobs = {**knobs, names[1]: replace(knobs[names[1]], keep_band=1)}
    if names[1] not in runs:                                 # super-res alone, from the clip at 16 kHz
        x2 = pad_edge(at_stage(second.spec, task.audio)[None], n2).expand(B, -1, -1).to(third.device)
    else:
        if task.mode == "upsample":                          # the cascader, from the clip at 3.2 kHz
            x1 = pad_edge(at_stage(first, task.audio)[None], n1).expand(B, -1, -1)
        given = known_at(second.spec, task, n1 * 160 if second.spec.aligned else n2)
        x2 = second_stage(second, first, x1, text_encoder, prompts, seconds, knobs[names[1]], gen, bar(names[1]),
                          given=given)
        if task.mode == "upsample" and task.rate > first.sample_rate and knobs[names[1]].keep_band:
            # a clip between 3.2 and 16 kHz: the cascader sees it at 3.2 kHz, but all of its band is kept
            x2 = keep_input_band(x2, pad_edge(at_stage(second.spec, task.audio)[None], n2).to(x2), 16000, task.rate)
        done(names[1], x2)
    x3 = third_stage(third, x2, seconds, knobs[names[2]], gen, bar(names[2]), given=known_at(third.spec, task, n3))
    done(names[2], x3)
    return final_audio(x3)


if __name__ == "__main__":
    for scale in SCALES:
        for stage, n in parameter_counts(scale).items():
            extra = (f"  Table 2: {PAPER_PARAMS[stage] / 1e6:.1f}M ({n / PAPER_PARAMS[stage] - 1:+.1%})"
                     if scale == "full" and stage in PAPER_PARAMS else "")
            print(f"{scale:4s} {stage:15s} {n / 1e6:8.2f}M{extra}")
    print_presets()
