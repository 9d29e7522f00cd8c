"""The 1-D Efficient U-Net: shapes, routes, CFG dropout, gradients, overfitting, and Table 2's sizes."""
import math
import os

import pytest
import torch

import cascade
import diffusion
from unet1d import UNet1D, UNetConfig, count_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(cfg, B, T, text_len=5):
    g = torch.Generator().manual_seed(0)
    kw = {}
    if cfg.cond_channels:
        kw["cond"] = torch.randn(B, cfg.cond_channels, T, generator=g)
    if cfg.text_dim:
        kw["text"] = torch.randn(B, text_len, cfg.text_dim, generator=g)
        mask = torch.ones(B, text_len, dtype=torch.bool)
        mask[0, 3:] = False                                  # padding in the batch
        kw["text_mask"] = mask
    if cfg.aligned_channels:
        kw["aligned"] = torch.randn(B, cfg.aligned_channels, -(-T // cfg.aligned_rate), generator=g)
    x = torch.randn(B, cfg.in_channels, T, generator=g)
    return x, torch.rand(B, generator=g), kw


@pytest.mark.parametrize("stage", cascade.STAGES)
def test_output_shape_equals_input_shape_odd_lengths(stage):
    cfg = cascade.unet_config(stage, "toy")
    model = UNet1D(cfg).eval()
    S = cfg.total_stride
    lengths = [2 * S, 2 * S + 1, 3 * S - 7] if not cfg.aligned_channels else [2 * S, 3 * S]
    for T in lengths:
        x, t, kw = _inputs(cfg, 2, T)
        with torch.no_grad():
            assert model(x, t, **kw).shape == x.shape


def test_every_parameter_gets_a_gradient():
    for stage in cascade.STAGES:
        cfg = cascade.unet_config(stage, "toy")
        model = UNet1D(cfg)
        x, t, kw = _inputs(cfg, 2, cfg.total_stride * 2)
        model(x, t, **kw).pow(2).mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, f"{stage}: no gradient for {missing}"


def test_dropped_text_equals_unconditional_path():
    cfg = cascade.unet_config("wave-generator", "toy")
    model = UNet1D(cfg).eval()
    x, t, kw = _inputs(cfg, 3, 512)
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        dropped = model(x, t, drop_text=drop, **kw)
        uncond = model(x, t)
        cond = model(x, t, **kw)
    torch.testing.assert_close(dropped[drop], uncond[drop], rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped[~drop], cond[~drop], rtol=0, atol=1e-6)
    assert (cond - uncond).abs().max() > 1e-4                 # the text does reach the output


def test_text_padding_is_masked():
    cfg = cascade.unet_config("wave-generator", "toy")
    model = UNet1D(cfg).eval()
    x, t, kw = _inputs(cfg, 2, 512)
    with torch.no_grad():
        a = model(x, t, **kw)
        kw["text"][0, 3:] = 1e3 * torch.randn(2, cfg.text_dim)   # change only masked positions
        b = model(x, t, **kw)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)


def test_aligned_input_changes_output():
    cfg = cascade.unet_config("vocoder", "toy")
    model = UNet1D(cfg).eval()
    x, t, kw = _inputs(cfg, 2, 320)
    with torch.no_grad():
        a = model(x, t, **kw)
        b = model(x, t, aligned=torch.zeros_like(kw["aligned"]))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError):
        model(x, t)


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    cfg = UNetConfig(16, 3, (2, 2), (1, 2), (1, 1), (False, True), (False, True), 2, text_dim=8)
    model = UNet1D(cfg)
    x, t, kw = _inputs(cfg, 4, 64)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = (model(x, t, **kw) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


# Every stage's parameter count, as cascade.py's docstring (full) and the README (toy) give them: a
# change to a U-Net or a preset changes one of these, and both documents with it.
PARAMETER_COUNTS = {
    "toy": {"wave-generator": 2_176_049, "cascader": 308_913, "spec-generator": 2_320_208, "vocoder": 274_913,
            "super-res": 182_993, "stereo": 183_090},
    "small": {"wave-generator": 196_809_345, "cascader": 142_890_625, "spec-generator": 224_813_264,
              "vocoder": 8_963_841, "super-res": 22_373_505, "stereo": 22_374_274},
    "full": {"wave-generator": 740_336_897, "cascader": 527_019_265, "spec-generator": 854_278_480,
             "vocoder": 35_737_089, "super-res": 89_377_025, "stereo": 89_378_562},
}


def test_parameter_counts_are_the_documented_ones_and_near_table2():
    for scale in cascade.SCALES:
        assert cascade.parameter_counts(scale) == PARAMETER_COUNTS[scale], scale
    # Within 10% of Table 2 where Figure 5 allows; cascade.py's docstring shows the arithmetic of the others.
    bands = {"wave-generator": 0.10, "cascader": 0.10, "spec-generator": 0.15, "vocoder": 0.40, "super-res": 0.11}
    for stage, n in PARAMETER_COUNTS["full"].items():
        if stage not in cascade.PAPER_PARAMS:          # the stereo stage is not in the paper
            continue
        assert abs(n / cascade.PAPER_PARAMS[stage] - 1) < bands[stage], (stage, n)


def test_shipped_toy_checkpoints_are_the_toy_presets():
    """checkpoints/toy holds U-Nets of exactly the toy presets (a preset changed without retraining fails)."""
    for stage in cascade.STAGES:
        ckpt = torch.load(os.path.join(ROOT, "checkpoints", "toy", f"{stage}.pt"), weights_only=True)
        assert UNetConfig.from_dict(ckpt["config"]) == cascade.unet_config(stage, "toy"), stage
        model = UNet1D(cascade.unet_config(stage, "toy"))
        model.load_state_dict({k: v.float() for k, v in ckpt["ema"].items()})     # every tensor, every shape
        assert count_parameters(model) == PARAMETER_COUNTS["toy"][stage]


def test_config_round_trip():
    cfg = cascade.unet_config("spec-generator", "full")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.strides == (4, 3, 2, 2, 2) and cfg.channels == [256, 512, 512, 768, 1024]


def test_toy_base_is_wide_enough_to_pass_the_input_through():
    # The entry convolution is x_t's only way into the U-Net: a base narrower than the stacked
    # input (80 mel channels) caps what the model can reconstruct.
    for stage in cascade.STAGES:
        for scale in cascade.SCALES:
            cfg = cascade.unet_config(stage, scale)
            assert cfg.base_dim >= cfg.in_channels + cfg.cond_channels, (stage, scale)


@pytest.mark.parametrize("stage", ["cascader", "vocoder", "super-res"])
def test_augmentation_level_reaches_output_and_defaults_to_clean(stage):
    cfg = cascade.unet_config(stage, "toy")
    assert cfg.aug_level                                  # Ho et al. 2022b: the cascaders see it
    model = UNet1D(cfg).eval()
    x, t, kw = _inputs(cfg, 2, cfg.total_stride * 2)
    with torch.no_grad():
        clean = model(x, t, **kw)
        zero = model(x, t, aug_t=torch.zeros(2), **kw)
        noisy = model(x, t, aug_t=torch.full((2,), 0.5), **kw)
    torch.testing.assert_close(clean, zero, rtol=0, atol=0)
    assert (clean - noisy).abs().max() > 1e-6


def test_config_without_aug_level_loads_as_before():
    d = cascade.unet_config("cascader", "toy").to_dict()
    del d["aug_level"]                                     # a checkpoint written before the field
    model = UNet1D(UNetConfig.from_dict(d))
    assert model.aug_time is None
    x, t, kw = _inputs(model.config, 1, model.config.total_stride)
    with torch.no_grad():                                  # aug_t is accepted and ignored
        torch.testing.assert_close(model(x, t, aug_t=torch.ones(1), **kw), model(x, t, **kw))


@pytest.mark.parametrize("stage", ["wave-generator", "spec-generator", "cascader"])
def test_preconditioned_network_with_zero_output_is_the_gaussian_denoiser(stage):
    """F = 0 leaves eps_hat = sigma x_t / (sigma^2 + alpha^2 sigma_d^2): E[eps | x_t] for N(0, sigma_d^2) data."""
    cfg = cascade.unet_config(stage, "toy")
    assert cfg.data_std > 0 and cfg.schedule == cascade.stage_spec(stage).schedule
    model = UNet1D(cfg).eval()
    torch.nn.init.zeros_(model.exit.weight)
    torch.nn.init.zeros_(model.exit.bias)
    x, t, kw = _inputs(cfg, 3, cfg.total_stride * 2)
    alpha, sigma = (v[:, None, None] for v in diffusion.alpha_sigma(t, cfg.schedule))
    with torch.no_grad():
        eps = model(x, t, **kw)
    torch.testing.assert_close(eps, sigma * x / (sigma ** 2 + (alpha * cfg.data_std) ** 2), rtol=1e-5, atol=1e-6)


def test_toy_waveform_stages_shift_their_noise_schedules():
    """Toy waveform stages: Table 2's schedule shifted by 2 ln(0.5 / 0.1) (cascade.SNR_SHIFT), in
    training, sampling and the preconditioning alike; the log-mel stage and `full` are unshifted."""
    for stage in cascade.STAGES:
        toy, full = cascade.stage_spec(stage, "toy"), cascade.stage_spec(stage, "full")
        base, shift = diffusion.parse_schedule(toy.schedule)
        assert base == full.schedule and diffusion.parse_schedule(full.schedule)[1] == 0.0
        expected = 2 * math.log(5.0) if toy.output == "wave" else 0.0
        assert shift == pytest.approx(expected, abs=1e-3)
        assert cascade.unet_config(stage, "toy").schedule == toy.schedule
        assert cascade.unet_config(stage, "full").schedule == full.schedule


def _reach(cfg, length=512, at=256):
    """Samples of the output that the input at `at` reaches (the receptive field's width).

    A NaN put there spreads to every output a convolution connects it to, however small the
    weights; GroupNorm's statistics span the whole sequence, so the norms are taken out.
    """
    torch.manual_seed(0)
    model = UNet1D(cfg).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    x = torch.randn(1, 1, length)
    x[..., at] = float("nan")
    with torch.no_grad():
        reached = model(x, torch.full((1,), 0.5))[0, 0].isnan().nonzero()
    return int(reached.max() - reached.min()) + 1


def test_dilation_widens_the_receptive_field_by_the_predicted_amount():
    # One depth of stride 1 and two blocks of kernel 5, down and up: eight convolutions of reach
    # 2 * d on each side, plus the entry and exit convolutions (kernel 3: 1 each). Undilated
    # 2 * (8 * 2 + 2) + 1 = 37 samples; with g = 2 the dilations are 1, 2, 4, 8 on each path:
    # 2 * (2 * 2 * 15 + 2) + 1 = 125.
    base = dict(base_dim=8, kernel_size=5, strides=(1,), channel_mults=(1,), blocks=(2,), self_attn=(False,),
                cross_attn=(False,), heads=1)
    assert _reach(UNetConfig(**base)) == 37
    assert _reach(UNetConfig(**base, dilation=(2,))) == 125
    assert UNetConfig(**base).dilation == (1,)
    with pytest.raises(ValueError, match="dilation"):
        UNetConfig(**base, dilation=(2, 2))


def test_config_without_dilation_loads_as_before():
    d = cascade.unet_config("cascader", "toy").to_dict()
    del d["dilation"]                                      # a checkpoint written before the field
    cfg = UNetConfig.from_dict(d)
    assert cfg.dilation == (1,) * len(cfg.strides)
    assert all(b.conv1.dilation == (1,) and b.conv2.dilation == (1,) for blocks in UNet1D(cfg).down_blocks for b in blocks)
