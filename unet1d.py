"""The 1-D Efficient U-Net of Noise2Music (section 3.2, Appendix B, Figures 1 and 5).

A one-dimensional version of Imagen's Efficient U-Net (Saharia et al., 2022): a stack of
down-sampling blocks, then their mirror image of up-sampling blocks, joined by additive skip
connections. Every block (Figure 5) is

    CombineEmb(t) -> GroupNorm+Swish -> Conv1D -> GroupNorm+Swish -> Conv1D  (+ FC on the residual)
    [-> self-attention -> MLP(2C)]  [-> cross-attention(text) -> MLP(2C)]

where the combine layer is FiLM: a fully connected layer maps the time embedding to a
channel-wise scale and bias applied to the block's input.

The four routes of entry (Figure 1):
  1. the stacked main input: x_t, with the FFT-up-sampled low-fidelity audio stacked on the
     channel axis for the cascaders (`cond`), (B, in_channels + cond_channels, T);
  2. the diffusion time t in [0, 1], (B,), through the combine layers;
  3. a text sequence (B, L, text_dim) with its padding mask (B, L), through cross-attention;
  4. an aligned but compressed sequence (B, aligned_channels, T / aligned_rate), projected and
     added at the bottom of the U (the vocoder's spectrogram).
Preconditioning (`UNetConfig.data_std` > 0; Appendix B is silent on how the U-Net's input and
output are scaled). The network stays an eps-predictor, trained on eq. 1 and sampled with eq. 4,
but the U-Net proper F sees a unit-variance input and its output is mixed with it as in Karras et
al. (2022, EDM), written for eps: with sigma_d the data's RMS and r = sqrt(sigma_t^2 + alpha_t^2
sigma_d^2),

    u = x_t / r,    eps_hat = (sigma_t / r) u - (alpha_t sigma_d / r) F(u, cond / sigma_d, ...).

At low noise this is plain eps-prediction; at high noise F predicts the (scaled) data, so the
implied x_0 = (x_t - sigma_t eps_hat) / alpha_t stays bounded (its error is at most sigma_d times
F's) instead of being F's error times sigma_t / alpha_t, 150 at t = 1 of the linear schedule. Without
it, the small toy cascaders could not learn to copy their conditioning: their x_0 at mid noise
was off by ~0.07 against audio of RMS 0.1, whatever the input said.

The cascaders and the vocoder also see the noise level of their conditioning augmentation
(`aug_t`, section 4.1): the paper follows Ho et al. (2022b), whose cascaded models are told the
augmentation level, so that at inference a clean input (aug_t = 0) is trusted in full. It is
embedded like t and added to the time embedding (`UNetConfig.aug_level`).

Choices the paper leaves open, and how this file fills them (each is a simplification or a guess):
  - Down-sampling is a Conv1D with kernel = stride = S_I (no overlap, exact T / S_I); up-sampling
    mirrors it with a ConvTranspose1D of the same kernel and stride.
  - The down path at depth I is [down-sample, blocks(C_I)]; its mirror on the way up is
    [blocks(C_I), up-sample]. The output of down depth I is added (scaled by 1/sqrt(2), as Imagen
    does) to the input of up depth I for I < D, and the entry convolution's output is added
    before the exit convolution. At the bottom (I = D) the aligned input is added instead.
  - The time embedding is sinusoidal in 1000 * t, then Linear(base, base) and Swish.
  - The FC on the residual path is a 1x1 convolution, present in every block and fed from the
    CombineEmb output, as Figure 5 draws it.
  - Attention uses pre-GroupNorm, torch's scaled_dot_product_attention, and head size C / heads.
  - Classifier-free guidance dropout (section 4.1): the cross-attention OUTPUT is multiplied by
    zero for the dropped examples (`drop_text`); `text=None` zeroes it for the whole batch.
  - Lengths the stride product does not divide (96,000 samples, 30 s at 3.2 kHz, vs 4^6) are
    zero-padded at the end to the next multiple and the output is cropped back.
An addition the paper does not have: `UNetConfig.dilation`, per depth a growth g such that the
two convolutions of that depth's block b dilate by g^(2b) and g^(2b+1) (WaveGrad's and DiffWave's
way of widening a waveform model's reach without more depth). g = 1 everywhere (the default, and
every preset) is Appendix B's block; docs/experiments.md records the trial of a dilated toy vocoder.
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import alpha_sigma


@dataclass
class UNetConfig:
    """Appendix B's hyperparameters (Table 8), plus the channel counts of the four input routes."""
    base_dim: int = 256                     # "base model dimension": entry/exit width and time-embedding width
    kernel_size: int = 7                    # kernel of the convolutions inside the blocks
    strides: tuple = (4, 4, 4, 4, 4, 4)     # down-sampling factor S_I per depth
    channel_mults: tuple = (1, 1, 2, 3, 4, 4)  # C_I = base_dim * mult_I
    blocks: tuple = (3, 3, 3, 4, 4, 4)      # blocks per depth (the same number down and up)
    self_attn: tuple = (False, False, False, True, True, True)
    cross_attn: tuple = (False, False, False, True, True, True)
    heads: int = 8
    dilation: tuple = ()        # per depth: growth g of the block convolutions' dilations (below); () = all 1
    in_channels: int = 1        # channels of x_t (and of the output eps): 1 for audio, 80 for a log-mel
    cond_channels: int = 0      # channels stacked with x_t (up-sampled low-fidelity audio)
    aligned_channels: int = 0   # channels of the aligned compressed input (80 for the vocoder)
    aligned_rate: int = 1       # its compression rate C: aligned length = T / C
    text_dim: int = 0           # width of the text embeddings (the T5 d_model); 0 = no text route
    aug_level: bool = False     # the conditioning's augmentation noise time enters with t (Ho et al. 2022b)
    data_std: float = 0.0       # > 0: precondition for data of this RMS (see above); 0 = a bare eps network
    schedule: str = ""          # the noise schedule, which the preconditioning reads alpha_t, sigma_t from

    def __post_init__(self):
        for name in ("strides", "channel_mults", "blocks", "self_attn", "cross_attn", "dilation"):
            setattr(self, name, tuple(getattr(self, name)))
        depth = len(self.strides)
        self.dilation = self.dilation or (1,) * depth
        for name in ("channel_mults", "blocks", "self_attn", "cross_attn", "dilation"):
            if len(getattr(self, name)) != depth:
                raise ValueError(f"UNetConfig.{name} must have one entry per depth ({depth})")
        if any(self.cross_attn) and self.text_dim <= 0:
            raise ValueError("UNetConfig: cross-attention needs text_dim > 0")

    @property
    def channels(self):
        return [self.base_dim * m for m in self.channel_mults]

    @property
    def total_stride(self):
        return math.prod(self.strides)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _groups(channels):
    """GroupNorm groups: 32 as in Imagen when the width allows, fewer for the toy widths."""
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def timestep_embedding(t, dim):
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as DDPM's integer steps): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    """Multi-head attention from a (B, C, T) sequence to itself or to a (B, L, D) context."""

    def __init__(self, channels, heads, context_dim=None):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim or channels, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x, context=None, mask=None):
        # x: (B, C, T); context: (B, L, D) or None for self-attention; mask: (B, L) bool, True = keep
        h = self.norm(x).transpose(1, 2)                      # (B, T, C)
        ctx = h if context is None else context
        B, T, C = h.shape
        q = self.q(h).view(B, T, self.heads, C // self.heads).transpose(1, 2)        # (B, H, T, c)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]                # (B, 1, 1, L)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)             # (B, H, T, c)
        return self.out(a.transpose(1, 2).reshape(B, T, C)).transpose(1, 2)          # (B, C, T)


class MLP(nn.Module):
    """The post-attention residual layer: hidden size 2 * C (Appendix B.1)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.fc1 = nn.Conv1d(channels, 2 * channels, 1)
        self.fc2 = nn.Conv1d(2 * channels, channels, 1)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.norm(x))))


class Block(nn.Module):
    """The convolutional block of Figure 5, with optional self- and cross-attention."""

    def __init__(self, channels, cfg: UNetConfig, self_attn, cross_attn, dilations=(1, 1)):
        super().__init__()
        C, k, (d1, d2) = channels, cfg.kernel_size, dilations
        self.combine = nn.Linear(cfg.base_dim, 2 * C)          # CombineEmb: time -> (scale, bias)
        self.norm1 = nn.GroupNorm(_groups(C), C)
        self.conv1 = nn.Conv1d(C, C, k, padding=d1 * (k // 2), dilation=d1)
        self.norm2 = nn.GroupNorm(_groups(C), C)
        self.conv2 = nn.Conv1d(C, C, k, padding=d2 * (k // 2), dilation=d2)
        self.residual = nn.Conv1d(C, C, 1)                     # the FC on the residual path
        self.self_attn = Attention(C, cfg.heads) if self_attn else None
        self.self_mlp = MLP(C) if self_attn else None
        self.cross_attn = Attention(C, cfg.heads, cfg.text_dim) if cross_attn else None
        self.cross_mlp = MLP(C) if cross_attn else None

    def forward(self, x, temb, text=None, text_mask=None, keep_text=None):
        # x: (B, C, T); temb: (B, base_dim); keep_text: (B, 1, 1) float, 0 for CFG-dropped examples
        scale, bias = self.combine(temb)[:, :, None].chunk(2, dim=1)     # (B, C, 1) each
        x = x * (1 + scale) + bias                                      # Figure 5 branches after CombineEmb
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        x = h + self.residual(x)
        if self.self_attn is not None:
            x = x + self.self_attn(x)
            x = x + self.self_mlp(x)
        if self.cross_attn is not None and text is not None:
            x = x + keep_text * self.cross_attn(x, text, text_mask)
            x = x + self.cross_mlp(x)
        elif self.cross_attn is not None:
            x = x + self.cross_mlp(x)          # text hidden: the attention output is zero
        return x


class UNet1D(nn.Module):
    """eps_theta(x_t, t, cond, text, aligned): the 1-D Efficient U-Net of Figure 1."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        chans = [cfg.base_dim] + cfg.channels                               # C_0 .. C_D
        self.entry = nn.Conv1d(cfg.in_channels + cfg.cond_channels, cfg.base_dim, 3, padding=1)
        self.time = nn.Linear(cfg.base_dim, cfg.base_dim)
        self.aug_time = nn.Linear(cfg.base_dim, cfg.base_dim) if cfg.aug_level else None
        self.down_sample, self.down_blocks = nn.ModuleList(), nn.ModuleList()
        self.up_blocks, self.up_sample = nn.ModuleList(), nn.ModuleList()
        for i, s in enumerate(cfg.strides):
            c_in, c = chans[i], chans[i + 1]
            g = cfg.dilation[i]       # block b's convolutions dilate by g^(2b) and g^(2b+1)
            make = lambda: nn.ModuleList(Block(c, cfg, cfg.self_attn[i], cfg.cross_attn[i], (g ** (2 * b), g ** (2 * b + 1)))
                                         for b in range(cfg.blocks[i]))
            self.down_sample.append(nn.Conv1d(c_in, c, s, stride=s))
            self.down_blocks.append(make())
            self.up_blocks.append(make())
            self.up_sample.append(nn.ConvTranspose1d(c, c_in, s, stride=s))
        self.aligned = nn.Conv1d(cfg.aligned_channels, chans[-1], 1) if cfg.aligned_channels else None
        self.exit_norm = nn.GroupNorm(_groups(cfg.base_dim), cfg.base_dim)
        self.exit = nn.Conv1d(cfg.base_dim, cfg.in_channels, 3, padding=1)

    def forward(self, x_t, t, cond=None, text=None, text_mask=None, aligned=None, drop_text=None, aug_t=None):
        """
        :param x_t: the [B x in_channels x T] noisy input.
        :param t: the [B] diffusion times in [0, 1].
        :param cond: the [B x cond_channels x T] stacked conditioning audio, or None.
        :param text: the [B x L x text_dim] text embeddings, or None for the unconditional path.
        :param text_mask: the [B x L] bool padding mask (True = real token), or None.
        :param aligned: the [B x aligned_channels x T / aligned_rate] aligned input, or None.
        :param drop_text: a [B] bool tensor; True zeroes the cross-attention output (CFG dropout).
        :param aug_t: the [B] augmentation noise times of cond/aligned (aug_level models); None = 0,
            a clean conditioning input.
        :return: eps_hat, the [B x in_channels x T] noise prediction.
        """
        cfg = self.config
        if cfg.data_std:                                                     # preconditioning (EDM)
            alpha, sigma = (v.to(x_t.dtype)[:, None, None] for v in alpha_sigma(t, cfg.schedule))
            r = torch.sqrt(sigma ** 2 + (alpha * cfg.data_std) ** 2)
            u = x_t / r
            cond = None if cond is None else cond / cfg.data_std
            out = self._eps_network(u, t, cond, text, text_mask, aligned, drop_text, aug_t)
            return (sigma / r) * u - (alpha * cfg.data_std / r) * out
        return self._eps_network(x_t, t, cond, text, text_mask, aligned, drop_text, aug_t)

    def _eps_network(self, x_t, t, cond, text, text_mask, aligned, drop_text, aug_t):
        """The U-Net proper: Figure 1's stack, on the (possibly preconditioned) inputs."""
        cfg = self.config
        T = x_t.shape[-1]
        pad = -T % cfg.total_stride                       # to a multiple of the stride product
        h = x_t if cond is None else torch.cat([x_t, cond], dim=1)           # (B, in + cond, T)
        h = F.pad(h, (0, pad))
        temb = self.time(timestep_embedding(t, cfg.base_dim))                # (B, base)
        if self.aug_time is not None:
            aug_t = torch.zeros_like(t) if aug_t is None else aug_t
            temb = temb + self.aug_time(timestep_embedding(aug_t, cfg.base_dim))
        temb = F.silu(temb)
        keep = None
        if text is not None:
            keep = torch.ones(x_t.shape[0], 1, 1, device=x_t.device, dtype=text.dtype)
            if drop_text is not None:
                keep = keep * (~drop_text).to(keep.dtype)[:, None, None]
        run = lambda blocks, h: self._run_blocks(blocks, h, temb, text, text_mask, keep)

        h = self.entry(h)                                                    # (B, base, T')
        skips = [h]
        for down, blocks in zip(self.down_sample, self.down_blocks):
            h = run(blocks, down(h))                                         # (B, C_I, T_I)
            skips.append(h)
        if self.aligned is not None:
            h = h + self._aligned_input(aligned, h.shape[-1])
        for i in reversed(range(len(cfg.strides))):
            if i < len(cfg.strides) - 1:
                h = (h + skips[i + 1]) / math.sqrt(2)
            h = self.up_sample[i](run(self.up_blocks[i], h))                 # (B, C_{I-1}, T_{I-1})
        h = (h + skips[0]) / math.sqrt(2)
        return self.exit(F.silu(self.exit_norm(h)))[..., :T]                 # (B, in, T)

    @staticmethod
    def _run_blocks(blocks, h, temb, text, text_mask, keep):
        for block in blocks:
            h = block(h, temb, text, text_mask, keep)
        return h

    def _aligned_input(self, aligned, length):
        """Project the aligned input (B, A, T / C) and bring it to the bottom length T' / prod(S)."""
        if aligned is None:
            raise ValueError("this U-Net has an aligned-input route: pass `aligned`")
        a = self.aligned(aligned)                                            # (B, C_D, T / C)
        if a.shape[-1] == length:
            return a
        ratio = self.config.aligned_rate / self.config.total_stride
        if ratio == 1:                                                       # only padding differs
            return F.pad(a, (0, length - a.shape[-1]))
        return F.interpolate(a, size=length, mode="nearest")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
