"""Gaussian diffusion for Noise2Music: section 3.1 and Appendix A of Huang et al. (2023).

What lives here, in the paper's notation (x_t = alpha_t x + sigma_t eps, t in [0, 1]):
- noise schedules (Appendix A.1): the log-SNR lambda_t = ln(alpha_t^2 / sigma_t^2) of the cosine
  schedule (eq. 6) and of the "linear" schedule (read as DDPM's beta-linear one, see `log_snr`);
  alpha_t and sigma_t follow from lambda_t as in VDM (Kingma et al., 2021);
- the forward process q(x_t | x) of eq. 2 (`q_sample`) and the training loss of eq. 1;
- the denoising step schedules of Table 7 (Appendix A.2), and a way to shrink them to fewer steps;
- the ancestral sampler of eq. 4 with its stochasticity parameter gamma (DDPM, Ho et al., 2020,
  written with the variances of eq. 3 as in Saharia et al., 2022), and, as extras the paper does
  not have, deterministic DDIM (Song et al., 2021) and the second-order DPM-Solver++(2M) (Lu et
  al., 2022), which needs fewer steps (`SAMPLERS`, `run_sampler`);
- classifier-free guidance (Ho & Salimans, 2022) in the paper's form, followed by Imagen's dynamic
  thresholding (Saharia et al., 2022) of the implied x_0;
- not in the paper, for audio in (cascade.py's note on it): eq. 4 with part of x_0 known, by
  replacement with RePaint's resampling (Lugmayr et al., 2022) or reconstruction guidance (Ho et
  al., 2022, video diffusion), and SDEdit (Meng et al., 2022), eq. 4 started at t = strength from
  the given x_0 noised.

Samplers are pure functions of an `eps_fn(x_t, t) -> eps_hat` callable, with t a (B,) float tensor
in [0, 1]: they know nothing of the model, its conditioning, or its device beyond x_T's.

Notation map (paper -> code): alpha_t, sigma_t -> `alpha_sigma`; lambda_t -> `log_snr`;
sigma^2_{t|s} -> `sigma2_t_given_s`; sigma~^2_{s|t} -> `sigma2_tilde_s_given_t`; gamma -> `gamma`;
delta_n -> `deltas`; t_n = delta_1 + ... + delta_n -> `step_times`; CFG scale w -> `w`.

Schedules are computed in float64 and cast back to the caller's dtype afterwards.
"""
import math
import re

import torch

SCHEDULES = ("cosine", "linear")
STEP_SCHEDULES = ("uniform", "front-heavy", "back-heavy", "back-heavy-eval")
WEIGHTINGS = ("unit", "sigma2")

# Imagen's dynamic thresholding takes "a certain percentile absolute pixel value" of x_0; neither
# Noise2Music nor Imagen gives the value (docs/paper-notes.md), and re-implementations use 0.9 to 0.999
# (imagen-pytorch: 0.95). We choose the 99.5th percentile: audio peaks are sparse, so a high
# percentile rescales only when more than 0.5% of an example's samples leave [-1, 1]. It is a
# free choice: pass another to `dynamic_clip` / `guided_eps_fn`, or None to turn clipping off.
DEFAULT_CLIP_PERCENTILE = 0.995


# ----------------------------------------------------------------------------------------------
# Noise schedules (Appendix A.1)

# Cosine schedule, eq. 6: alpha_t = cos(a t + b), so lambda_0 = +20 and lambda_1 = -20.
_COSINE_B = math.atan(math.exp(-10.0))
_COSINE_A = math.atan(math.exp(10.0)) - _COSINE_B


def _cosine_log_snr(t):
    """lambda_t of eq. 6: alpha/sigma = cot(a t + b), so lambda_t = -2 ln tan(a t + b)."""
    return -2.0 * torch.log(torch.tan(_COSINE_A * t + _COSINE_B))


def _linear_log_snr(t):
    """lambda_t of DDPM's beta-linear schedule in continuous time.

    The paper prints eq. 5, "sigma_t^2 linear in t from 1e-4 to 0.02", but read literally that
    leaves sigma_1^2 = 0.02, so x_1 is 99% signal and sampling from x_1 ~ N(0, I) would be wrong
    (docs/paper-notes.md). The numbers are those of the DDPM *beta* schedule (Ho et al. 2020: beta_n from
    1e-4 to 0.02 over 1000 steps), which the paper cites, so that is the reading implemented.
    Over t in [0, 1], -ln prod(1 - beta_n) ~= 0.1 t + 9.95 t^2; the continuous form in common use
    (e.g. Imagen re-implementations) rounds this to 1e-4 + 10 t^2, giving alpha_t^2 =
    exp(-(1e-4 + 10 t^2)) and lambda_t = -log(expm1(1e-4 + 10 t^2)):
    lambda_0 ~= +9.2 (sigma_0 = 0.01) and lambda_1 ~= -10 (alpha_1^2 ~= 4.5e-5).
    """
    return -torch.log(torch.expm1(1e-4 + 10.0 * t ** 2))


def shifted(schedule, shift):
    """The name of `schedule` with its log-SNR shifted by `shift` nats: "cosine" -> "cosine+3.219".

    lambda'_t = lambda_t + shift is the schedule seen by data scaled by exp(shift / 2) (Kingma et
    al., 2021; Hoogeboom et al., 2023, "shifted" schedules): a schedule built for data of unit
    scale, applied to quieter data, spends most of its noise levels where the data is already
    drowned. cascade.py shifts the toy waveform stages' schedules (see SNR_SHIFT there).
    """
    return schedule if not shift else f"{schedule}{shift:+.3f}"


def parse_schedule(schedule):
    """(base name, log-SNR shift) of a schedule name: "linear" -> ("linear", 0.0),
    "cosine+3.219" -> ("cosine", 3.219)."""
    match = re.fullmatch(r"([a-z]+)([+-]\d+(?:\.\d*)?)?", str(schedule))
    if not match or match.group(1) not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}, "
                         "optionally with a log-SNR shift such as 'cosine+3.2'")
    return match.group(1), float(match.group(2) or 0.0)


def log_snr(t, schedule):
    """lambda_t = ln(alpha_t^2 / sigma_t^2) of eq. 3 for a noise schedule of Appendix A.1.

    :param t: a tensor of times in [0, 1], any shape.
    :param schedule: "cosine" (eq. 6) or "linear" (DDPM beta-linear, see `_linear_log_snr`),
        optionally shifted (`shifted`).
    :return: lambda_t, computed in float64 and cast back to t's dtype.
    """
    t = torch.as_tensor(t)
    t64 = t.to(torch.float64)
    base, shift = parse_schedule(schedule)
    lam = (_cosine_log_snr(t64) if base == "cosine" else _linear_log_snr(t64)) + shift
    return lam.to(t.dtype if t.is_floating_point() else torch.get_default_dtype())


def alpha_sigma(t, schedule):
    """alpha_t and sigma_t from lambda_t: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).

    So alpha_t^2 + sigma_t^2 = 1 (variance preserving, eq. 3) for any schedule.

    :param t: a tensor of times in [0, 1], any shape.
    :param schedule: a name in SCHEDULES.
    :return: (alpha_t, sigma_t), each shaped like t, computed in float64 and cast to t's dtype.
    """
    t = torch.as_tensor(t)
    lam = log_snr(t.to(torch.float64), schedule)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    return alpha.to(dtype), sigma.to(dtype)


def _expand(v, x):
    """Reshape a (B,) tensor to (B, 1, ..., 1) so that it broadcasts over x's non-batch dims."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------------------------
# Forward process and training loss (eqs. 1-2)

def q_sample(x0, t, eps, schedule):
    """Draw x_t ~ q(x_t | x) = N(alpha_t x, sigma_t^2 I) of eq. 2 as alpha_t x0 + sigma_t eps.

    :param x0: the clean [B x C x T] tensor (any [B x ...] shape works).
    :param t: a (B,) tensor of times in [0, 1].
    :param eps: standard normal noise shaped like x0.
    :param schedule: a name in SCHEDULES.
    :return: x_t, shaped like x0.
    """
    alpha, sigma = alpha_sigma(t, schedule)
    alpha, sigma = _expand(alpha.to(x0.dtype), x0), _expand(sigma.to(x0.dtype), x0)
    return alpha * x0 + sigma * eps


def diffusion_loss(eps_hat, eps, t, schedule, weighting):
    """The diffusion loss of eq. 1, E[w_t ||eps_theta(x_t, c, t) - eps||^2].

    The squared norm is taken as a mean over elements (a constant factor of eq. 1), so the loss
    does not scale with clip length.

    :param eps_hat: the model's [B x C x T] noise prediction.
    :param eps: the noise that made x_t, shaped like eps_hat.
    :param t: the (B,) times.
    :param schedule: a name in SCHEDULES (needed for the sigma weighting).
    :param weighting: "unit" (w_t = 1, Ho et al. 2020) or "sigma2" (w_t = sigma_t^2; Table 2's
        "Sigma" loss, used by the spectrogram generator).
    :return: a scalar tensor.
    """
    err = (eps_hat - eps) ** 2
    if weighting == "unit":
        return err.mean()
    if weighting == "sigma2":
        _, sigma = alpha_sigma(t, schedule)
        return (_expand(sigma.to(err.dtype) ** 2, err) * err).mean()
    raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {WEIGHTINGS}")


# ----------------------------------------------------------------------------------------------
# Denoising step schedules (section 4.2.1, Appendix A.2, Table 7)

# Table 7, front-heavy step sizes delta_n, verbatim (t_n = delta_1 + ... + delta_n; small steps
# first means many steps near t = 0). Back-heavy is each list reversed; uniform is [1/N] * N.
# Note: the spectrogram generator's front-heavy list has 2000 steps, while Table 4 serves it with
# 1000; its evaluation list, TABLE7_SPEC_EVAL, has 1000.
TABLE7 = {
    "wave-generator": [0.01 / 200] * 200 + [0.04 / 400] * 400 + [0.15 / 200] * 200
    + [0.3 / 150] * 150 + [0.5 / 50] * 50,
    "cascader": [0.05 / 400] * 400 + [0.15 / 200] * 200 + [0.3 / 150] * 150 + [0.5 / 50] * 50,
    "spec-generator": [0.01 / 400] * 400 + [0.04 / 800] * 800 + [0.15 / 400] * 400
    + [0.3 / 300] * 300 + [0.5 / 100] * 100,
    "vocoder": [0.05 / 50] * 50 + [0.15 / 30] * 30 + [0.3 / 15] * 15 + [0.5 / 5] * 5,
    "super-res": [0.05 / 400] * 400 + [0.15 / 200] * 200 + [0.3 / 150] * 150 + [0.5 / 50] * 50,
}
# Table 7, spectrogram generator, "back heavy eval": the back-heavy list as modified for the
# final evaluation (already back-heavy: the big steps come first, near t = 0).
TABLE7_SPEC_EVAL = [0.3 / 50] * 50 + [0.3 / 150] * 150 + [0.2 / 300] * 300 + [0.2 / 500] * 500


def _resample_deltas(deltas, n_steps):
    """Shrink (or stretch) a step schedule to n_steps while keeping its shape.

    The times t_n = delta_1 + ... + delta_n, with t_0 = 0, are read as a piecewise-linear function
    of the step fraction n / N; it is resampled at the n_steps + 1 fractions k / n_steps and the
    new deltas are the differences. The result is positive (t_n is strictly increasing) and its
    times still run from 0 to 1.
    """
    deltas = torch.as_tensor(deltas, dtype=torch.float64)
    times = torch.cat([deltas.new_zeros(1), deltas.cumsum(0)])
    times = times / times[-1]  # (N + 1,), from 0 to 1
    pos = torch.linspace(0, len(deltas), n_steps + 1, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(deltas) - 1)
    new_times = times[lo] + (pos - lo) * (times[lo + 1] - times[lo])
    return (new_times[1:] - new_times[:-1]).tolist()


def _front_heavy_shape(name, stage):
    """The Table 7 list whose shape a named step schedule follows (front-heavy orientation)."""
    if name == "back-heavy-eval":
        if stage not in (None, "spec-generator"):
            raise ValueError("the 'back-heavy-eval' schedule exists only for the spec-generator")
        return TABLE7_SPEC_EVAL
    if stage is None:
        return TABLE7["wave-generator"]
    if stage not in TABLE7:
        raise ValueError(f"unknown stage {stage!r}; expected one of {tuple(TABLE7)}")
    return TABLE7[stage]


def step_schedule(name, n_steps, stage=None):
    """Step sizes [delta_1, ..., delta_N] of a named denoising schedule (section 4.2.1, Table 7).

    :param name: "uniform", "front-heavy" (many small steps near t = 0), "back-heavy" (the
        front-heavy list reversed: many small steps near t = 1), or "back-heavy-eval" (the
        spectrogram generator's evaluation list, TABLE7_SPEC_EVAL).
    :param n_steps: N, the number of denoising steps.
    :param stage: a key of TABLE7 whose shape to follow; None uses the wave generator's shape.
        If n_steps equals the length of that Table 7 list, the list is returned verbatim;
        otherwise it is resampled to n_steps as in `_resample_deltas`.
    :return: a list of N positive floats summing to 1.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if name not in STEP_SCHEDULES:
        raise ValueError(f"unknown step schedule {name!r}; expected one of {STEP_SCHEDULES}")
    if name == "uniform":
        return [1.0 / n_steps] * n_steps
    shape = _front_heavy_shape(name, stage)
    deltas = list(shape) if n_steps == len(shape) else _resample_deltas(shape, n_steps)
    return deltas[::-1] if name == "back-heavy" else deltas


def load_deltas(path, tol=1e-3):
    """Read step sizes delta_n from a text file (separated by whitespace, commas or newlines).

    Text after '#' on a line is a comment. The deltas must be positive and finite and sum to 1
    within tol; they are then renormalised to sum to 1 exactly.

    :param path: the text file.
    :param tol: the largest accepted |sum - 1|.
    :return: a list of floats.
    """
    with open(path) as f:
        text = "\n".join(line.split("#", 1)[0] for line in f)
    fields = [s for s in re.split(r"[\s,]+", text) if s]
    try:
        deltas = [float(s) for s in fields]
    except ValueError as e:
        raise ValueError(f"{path}: step sizes must be numbers ({e})") from None
    if not deltas:
        raise ValueError(f"{path}: no step sizes found")
    if not all(math.isfinite(d) and d > 0 for d in deltas):
        raise ValueError(f"{path}: step sizes must be positive and finite")
    total = math.fsum(deltas)
    if abs(total - 1.0) > tol:
        raise ValueError(f"{path}: step sizes sum to {total:.6g}, not 1 (tolerance {tol})")
    return [d / total for d in deltas]


def step_times(deltas):
    """The times 0 = t_0 < t_1 < ... < t_N = 1 of a step schedule, t_n = delta_1 + ... + delta_n.

    :param deltas: N positive step sizes summing to 1 (within 1e-4; they are renormalised).
    :return: a float64 tensor of N + 1 times.
    """
    deltas = torch.as_tensor(deltas, dtype=torch.float64).flatten()
    if len(deltas) == 0 or not bool((deltas > 0).all()):
        raise ValueError("step sizes must be a non-empty list of positive numbers")
    total = deltas.sum()
    if abs(float(total) - 1.0) > 1e-4:
        raise ValueError(f"step sizes sum to {float(total):.6g}, not 1")
    return torch.cat([deltas.new_zeros(1), deltas.cumsum(0) / total])


# ----------------------------------------------------------------------------------------------
# Samplers (Appendix A, eq. 4)

def sigma2_t_given_s(lambda_t, lambda_s, sigma_t):
    """sigma^2_{t|s} = (1 - e^{lambda_t - lambda_s}) sigma_t^2 of eq. 3, the forward variance."""
    return -torch.expm1(lambda_t - lambda_s) * sigma_t ** 2


def sigma2_tilde_s_given_t(lambda_t, lambda_s, sigma_s):
    """sigma~^2_{s|t} = (1 - e^{lambda_t - lambda_s}) sigma_s^2 of eq. 3, the posterior variance."""
    return -torch.expm1(lambda_t - lambda_s) * sigma_s ** 2


def _step_terms(t, s, schedule):
    """Float64 scalars (lambda, alpha, sigma) at times t and s of one denoising step."""
    ts = torch.tensor([t, s], dtype=torch.float64)
    lam = log_snr(ts, schedule)
    alpha, sigma = alpha_sigma(ts, schedule)
    return lam[0], lam[1], alpha[0], alpha[1], sigma[0], sigma[1]


def ancestral_coefficients(t, s, schedule, gamma):
    """The three coefficients of eq. 4, x_s = c_x x_t - c_eps eps_hat + c_z z, as Python floats.

    c_x = alpha_s / alpha_t, c_eps = (1 - e^{lambda_t - lambda_s}) (alpha_s / alpha_t) sigma_t,
    and the noise std c_z = sigma~_{s|t}^{1 - gamma} sigma_{t|s}^gamma: gamma = 0 uses the
    posterior variance of q(x_s | x_t, x), gamma = 1 the larger forward variance (both stochastic).
    """
    lam_t, lam_s, alpha_t, alpha_s, sigma_t, sigma_s = _step_terms(t, s, schedule)
    c_x = alpha_s / alpha_t
    c_eps = -torch.expm1(lam_t - lam_s) * c_x * sigma_t
    sigma_tilde = sigma2_tilde_s_given_t(lam_t, lam_s, sigma_s).sqrt()
    sigma_fwd = sigma2_t_given_s(lam_t, lam_s, sigma_t).sqrt()
    c_z = sigma_tilde ** (1.0 - gamma) * sigma_fwd ** gamma
    return float(c_x), float(c_eps), float(c_z)


def _steps(n, progress):
    """Step indices N, ..., 1 (t = t_n, s = t_{n-1}), wrapped by a progress bar if given."""
    idx = range(n, 0, -1)
    return progress(idx) if progress is not None else idx


def _time_batch(t, x):
    """A (B,) tensor filled with the time t, in x's floating dtype and device."""
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.full((x.shape[0],), t, dtype=dtype, device=x.device)


def _noise_like(x, generator):
    """z ~ N(0, I) shaped like x, drawn on the generator's device and moved to x's.

    So a CPU torch.Generator can drive sampling on a GPU (and gives the same noise on both).
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _check_gamma(gamma):
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")


def ancestral_step(eps_fn, x, t, s, schedule, gamma, generator=None):
    """One step of eq. 4 from time t to s < t, the step that every eq. 4 sampler here takes.

    x_s = c_x x_t - c_eps eps_hat + c_z z (`ancestral_coefficients`). At s = 0 it adds no noise and
    returns the data estimate x_hat = (x_t - sigma_t eps_hat) / alpha_t (see `sample` for why).

    :return: (x_s, x_0 estimate or None); at s = 0, x_s is the estimate itself.
    """
    t_batch = _time_batch(t, x)
    eps_hat = eps_fn(x, t_batch)
    if s == 0:
        x0 = x0_from_eps(x, eps_hat, t_batch, schedule)
        return x0, x0
    c_x, c_eps, c_z = ancestral_coefficients(t, s, schedule, gamma)
    return c_x * x - c_eps * eps_hat + c_z * _noise_like(x, generator), None


@torch.no_grad()
def sample(eps_fn, x_T, deltas, schedule, gamma, generator=None, progress=None):
    """Ancestral (DDPM) sampling with stochasticity gamma: eq. 4 of Appendix A.

    Runs from x_T at t_N = 1 through t_{N-1}, ..., down to t_0 = 0, where t_n = delta_1 + ... +
    delta_n. Note that gamma = 0 is not DDIM (see `ddim_sample`). As in Ho et al. (2020,
    Algorithm 2), the last step, to s = 0, adds no noise, and it lands on the data itself: it
    returns x_hat = (x_t - sigma_t eps_hat) / alpha_t, which is eq. 4's mean with lambda_s = +inf.
    Why: the schedules stop short of the data at t = 0 (the linear one at sigma_0 = 0.01, DDPM's
    first noisy step; the cosine one at 4.5e-5), and eq. 4's mean towards t = 0 keeps about
    sigma_0 of the noise. For images that is invisible; for audio at an RMS of 0.1, sigma_0 = 0.01
    is white noise only 20 dB down, which masks quiet notes and fakes onsets.

    :param eps_fn: a callable eps_fn(x_t, t) -> eps_hat, with t a (B,) tensor of times.
    :param x_T: the [B x C x T] starting noise, N(0, I).
    :param deltas: step sizes delta_1, ..., delta_N (see `step_schedule`).
    :param schedule: the noise schedule the model was trained with, a name in SCHEDULES.
    :param gamma: the stochasticity parameter, in [0, 1].
    :param generator: an optional torch.Generator for the noise z (on any device: z is drawn
        there and moved to x_T's device).
    :param progress: an optional wrapper of an iterable, e.g. tqdm.
    :return: x_0, shaped like x_T.
    """
    _check_gamma(gamma)
    times = step_times(deltas).tolist()
    x = x_T
    for n in _steps(len(times) - 1, progress):
        x, _ = ancestral_step(eps_fn, x, times[n], times[n - 1], schedule, gamma, generator)
    return x


@torch.no_grad()
def ddim_sample(eps_fn, x_T, deltas, schedule, progress=None):
    """Deterministic DDIM sampling (Song et al. 2021, eq. 12 with eta = 0); not part of the paper.

    Each step predicts x_hat = (x_t - sigma_t eps_hat) / alpha_t and moves to
    x_s = alpha_s x_hat + sigma_s eps_hat. Same arguments as `sample`, without gamma and noise.

    :return: x_0, shaped like x_T; as in `sample`, the last step returns the data estimate x_hat.
    """
    times = step_times(deltas).tolist()
    x = x_T
    for n in _steps(len(times) - 1, progress):
        t, s = times[n], times[n - 1]
        t_batch = _time_batch(t, x)
        eps_hat = eps_fn(x, t_batch)
        if n == 1:
            return x0_from_eps(x, eps_hat, t_batch, schedule)
        _, _, alpha_t, alpha_s, sigma_t, sigma_s = _step_terms(t, s, schedule)
        # x_s = (alpha_s / alpha_t) x_t + (sigma_s - alpha_s sigma_t / alpha_t) eps_hat
        x = float(alpha_s / alpha_t) * x + float(sigma_s - alpha_s * sigma_t / alpha_t) * eps_hat
    return x


@torch.no_grad()
def dpmpp_2m_sample(eps_fn, x_T, deltas, schedule, progress=None):
    """DPM-Solver++(2M): Algorithm 2 of Lu et al. (2022, "DPM-Solver++"); not part of the paper.

    A second-order multistep solver of the probability-flow ODE in data prediction. With
    h = (lambda_s - lambda_t) / 2 (Lu et al.'s lambda is half of this file's log-SNR), each step is

        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,
        D = (1 + 1 / 2r) x0_t - (1 / 2r) x0_prev,    r = h_prev / h,

    with x0 = (x_t - sigma_t eps_hat) / alpha_t, and D = x0_t on the first step (DDIM's step,
    written in lambda). One model call per step, as `sample`. CFG and dynamic clipping act on these
    x_0 estimates: `clipped_eps_fn` returns the eps whose implied x_0 is the clipped one, so the
    x_0 formed here is the clipped x_0 (up to float rounding). Shifted schedules need nothing more:
    lambda_t comes from `log_snr`. As in `sample`, the last step, to t = 0, returns the data
    estimate x0_t itself (k-diffusion's DPM++(2M) does the same when sigma reaches 0).
    Same arguments as `ddim_sample`.

    :return: x_0, shaped like x_T.
    """
    times = step_times(deltas).tolist()
    x, x0_prev, h_prev = x_T, None, None
    for n in _steps(len(times) - 1, progress):
        t, s = times[n], times[n - 1]
        lam_t, lam_s, alpha_t, alpha_s, sigma_t, sigma_s = (float(v) for v in _step_terms(t, s, schedule))
        x0 = (x - sigma_t * eps_fn(x, _time_batch(t, x))) / alpha_t
        if n == 1:
            return x0
        h = (lam_s - lam_t) / 2
        d = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - (h / (2 * h_prev)) * x0_prev
        x = (sigma_s / sigma_t) * x - (alpha_s * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    return x


SAMPLERS = ("ancestral", "ddim", "dpmpp-2m")


def run_sampler(name, eps_fn, x_T, deltas, schedule, gamma, generator=None, progress=None):
    """Sample with the sampler named `name` (a name in SAMPLERS); gamma and generator serve eq. 4 only."""
    if name == "ancestral":
        return sample(eps_fn, x_T, deltas, schedule, gamma, generator, progress)
    if name == "ddim":
        return ddim_sample(eps_fn, x_T, deltas, schedule, progress)
    if name == "dpmpp-2m":
        return dpmpp_2m_sample(eps_fn, x_T, deltas, schedule, progress)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance and dynamic clipping (section 3.1; Imagen, Saharia et al. 2022)

def cfg_eps(eps_cond, eps_uncond, w):
    """Classifier-free guidance in the paper's form: w eps(x, c) + (1 - w) eps(x, none).

    w = 1 is the conditional prediction; w = 0 the unconditional one.
    """
    return w * eps_cond + (1.0 - w) * eps_uncond


def _row_quantile(a, q):
    """The q-quantile of each row of a [B x M] tensor, interpolating linearly like torch.quantile.

    Written with two order statistics (torch.kthvalue, linear time) because torch.quantile refuses
    inputs of more than 2^24 elements, which a batch of 30 s waveforms exceeds; a full sort of
    every row took up to a tenth of a sampling step.
    """
    pos = q * (a.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, a.shape[1] - 1)
    a_lo = a.kthvalue(lo + 1, dim=1).values
    a_hi = a_lo if hi == lo else a.kthvalue(hi + 1, dim=1).values
    return a_lo + (pos - lo) * (a_hi - a_lo)


def dynamic_clip(x0, percentile=DEFAULT_CLIP_PERCENTILE):
    """Imagen's dynamic thresholding of a predicted x_0, per example.

    s = the percentile of |x0| over all non-batch dims, s = max(s, 1), then x0 -> clamp(x0, -s, s)
    / s, so the result lies in [-1, 1]; examples whose values already lie within [-1, 1] pass
    through unchanged.

    :param x0: the predicted clean [B x C x T] tensor.
    :param percentile: a fraction in (0, 1], e.g. 0.995 for the 99.5th percentile.
    :return: the clipped x0, same shape.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be a fraction in (0, 1], got {percentile}")
    s = _row_quantile(x0.abs().reshape(x0.shape[0], -1), percentile)  # (B,)
    s = _expand(s.clamp(min=1.0), x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def x0_from_eps(x_t, eps, t, schedule):
    """The x_0 implied by a noise prediction: (x_t - sigma_t eps) / alpha_t (inverting eq. 2)."""
    alpha, sigma = alpha_sigma(t, schedule)
    return (x_t - _expand(sigma.to(x_t.dtype), x_t) * eps) / _expand(alpha.to(x_t.dtype), x_t)


def clipped_eps_fn(eps_fn, schedule, percentile=DEFAULT_CLIP_PERCENTILE):
    """Wrap eps_fn so that its implied x_0 is dynamically clipped (Imagen).

    The returned eps is the one consistent with the clipped x_0, (x_t - alpha_t x0_clip) / sigma_t,
    written as eps + (alpha_t / sigma_t)(x0 - x0_clip) so that it is exactly eps when clipping
    changes nothing (no float cancellation near t = 0, where sigma_t is tiny).
    """
    def clipped(x_t, t):
        eps = eps_fn(x_t, t)
        x0 = x0_from_eps(x_t, eps, t, schedule)
        alpha, sigma = alpha_sigma(t, schedule)
        ratio = _expand((alpha / sigma).to(x_t.dtype), x_t)
        return eps + ratio * (x0 - dynamic_clip(x0, percentile))
    return clipped


def projected_eps_fn(eps_fn, schedule, project, above=0.0):
    """Wrap eps_fn so that, at times t > above, its implied x_0 is replaced by project(x_0).

    As in `clipped_eps_fn`, the returned eps is the one consistent with the projected x_0. The
    vocoder uses it with data.project_to_mel (GLA-Grad, Liu et al. 2024; not in Noise2Music).

    :param project: a callable x_0 -> x_0 of the same shape.
    :param above: below or at this time (the batch's largest t) eps_fn is left alone.
    """
    def projected(x_t, t):
        eps = eps_fn(x_t, t)
        if float(t.max()) <= above:
            return eps
        x0 = x0_from_eps(x_t, eps, t, schedule)
        alpha, sigma = alpha_sigma(t, schedule)
        return eps + _expand((alpha / sigma).to(x_t.dtype), x_t) * (x0 - project(x0))
    return projected


def guided_eps_fn(eps_pair_fn, w, schedule, percentile=DEFAULT_CLIP_PERCENTILE):
    """Classifier-free guidance then dynamic clipping, as one eps_fn(x_t, t) for the samplers.

    Design: the caller passes ONE callable, eps_pair_fn(x_t, t) -> (eps_cond, eps_uncond), so it
    can evaluate both predictions in a single batched model call (e.g. concatenate the batch with
    the text hidden, as in training). Two separate callables can be adapted with `eps_pair`.

    :param eps_pair_fn: a callable (x_t, t) -> (eps_cond, eps_uncond).
    :param w: the CFG scale (Table 3: 10 wave generator, 5 cascader and spec generator).
    :param schedule: the noise schedule, a name in SCHEDULES (to form x_0 from eps).
    :param percentile: the dynamic clipping percentile, or None for no clipping.
    :return: eps_fn(x_t, t) -> guided, clipped eps_hat.
    """
    def guided(x_t, t):
        eps_cond, eps_uncond = eps_pair_fn(x_t, t)
        return cfg_eps(eps_cond, eps_uncond, w)
    return guided if percentile is None else clipped_eps_fn(guided, schedule, percentile)


def eps_pair(eps_cond_fn, eps_uncond_fn):
    """Adapt two callables eps_fn(x_t, t) into the eps_pair_fn that `guided_eps_fn` takes."""
    return lambda x_t, t: (eps_cond_fn(x_t, t), eps_uncond_fn(x_t, t))


# ----------------------------------------------------------------------------------------------
# Samplers given part of the audio (continuation, inpainting, long-form, audio-to-audio)

def _renoise(x_s, s, t, schedule, generator):
    """Draw x_t ~ q(x_t | x_s) = N((alpha_t / alpha_s) x_s, sigma^2_{t|s} I) for t > s (eq. 3)."""
    lam_s, lam_t, alpha_s, alpha_t, _, sigma_t = _step_terms(s, t, schedule)
    std = sigma2_t_given_s(lam_t, lam_s, sigma_t).sqrt()
    return float(alpha_t / alpha_s) * x_s + float(std) * _noise_like(x_s, generator)


def repaint_path(n_steps, jump=0, resample=1):
    """The step indices visited by RePaint's resampling schedule (Lugmayr et al. 2022, section 4.2).

    Walking from n = N down to 0, at every multiple n of `jump` (0 < n <= N - jump) the first
    `resample` - 1 arrivals jump back up `jump` steps (re-noising with q(x_t | x_s)) and walk down
    again, so that the known and the generated parts have `jump` steps to agree before the walk
    goes on. jump = 0 or resample = 1 gives the plain path N, N - 1, ..., 0. The number of model
    calls is about N * resample.

    :return: a list of indices into `step_times`, starting at N and ending at 0.
    """
    left = {n: resample - 1 for n in range(jump, n_steps - jump + 1, jump)} if jump > 0 and resample > 1 else {}
    path, n = [n_steps], n_steps
    while n > 0:
        n -= 1
        path.append(n)
        if left.get(n, 0) > 0:
            left[n] -= 1
            path += list(range(n + 1, n + jump + 1))
            n += jump
    return path


def reconstruction_guided_eps_fn(eps_fn, schedule, known, mask, weight):
    """Wrap eps_fn with reconstruction guidance (Ho et al. 2022, video diffusion, eq. 7).

    Replacement tells the unknown part about the known one only through x_t, which at high noise
    says little. Reconstruction guidance also moves the unknown part's x_0 estimate along the
    gradient, taken through the model, of how far the known part's estimate lies from the known
    audio: x~_0 = x^_0 - (weight alpha_t / 2) (1 - mask) grad_{x_t} ||mask (known - x^_0)||^2
    (weight = 1 is the Gaussian approximation q(known | x_t) = N(x^_0, sigma_t^2 / alpha_t^2 I);
    Ho et al. find weights above 1 better). The returned eps is the one consistent with x~_0, written
    as eps_hat + (alpha_t / sigma_t)(x^_0 - x~_0) as in `clipped_eps_fn`. It costs
    a backward pass through eps_fn per step, so eps_fn must be differentiable (no inference_mode).
    """
    def guided(x_t, t):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            eps = eps_fn(x, t)
            err = (mask * (known - x0_from_eps(x, eps, t, schedule))).pow(2).sum()
            grad, = torch.autograd.grad(err, x)
        alpha, sigma = alpha_sigma(t, schedule)
        shift = _expand((weight * alpha / 2).to(x_t.dtype), x_t) * (1 - mask) * grad     # x^_0 - x~_0
        return eps.detach() + _expand((alpha / sigma).to(x_t.dtype), x_t) * shift
    return guided


@torch.no_grad()
def known_region_sample(eps_fn, x_T, deltas, schedule, gamma, known, mask, jump=0, resample=1,
                        generator=None, progress=None, guidance=0.0):
    """Eq. 4 with part of x_0 given: replacement, optionally with RePaint's resampling and / or
    reconstruction guidance (`reconstruction_guided_eps_fn`).

    After every denoising step to time s, the known part of x_s is replaced by the known audio
    noised to s, q_sample(known, s) (the "replacement" method of Song et al. 2021 and Ho et al.
    2022, video diffusion); the model's own step is kept where mask is 0. Plain replacement
    (jump = 0) lets the generated part see the known part only through x_s, which at high noise
    says little, so the two may not fit; RePaint (Lugmayr et al. 2022) re-noises and repeats
    stretches of the walk (`repaint_path`) so that they harmonize. The last step's data estimate
    keeps the known part exactly: out = mask * known + (1 - mask) * x_0_hat.

    :param eps_fn: eps_fn(x_t, t) -> eps_hat, as for `sample`.
    :param x_T: the [B x C x T] starting noise.
    :param known: the known x_0, [B x C x T] (or broadcastable); values where mask is 0 are unused.
    :param mask: 1 (or True) where x_0 is known, broadcastable to x_T, e.g. [1 x 1 x T].
    :param jump, resample: RePaint's jump length j and number of resamplings r (0 / 1: replacement).
    :param guidance: the weight of reconstruction guidance (`reconstruction_guided_eps_fn`; 0: none).
    :return: x_0, shaped like x_T.
    """
    _check_gamma(gamma)
    times = step_times(deltas).tolist()
    mask = mask.to(x_T.dtype)
    known = known.to(x_T.dtype).expand_as(x_T)
    if guidance > 0:
        eps_fn = reconstruction_guided_eps_fn(eps_fn, schedule, known, mask, guidance)
    path = repaint_path(len(times) - 1, jump, resample)
    x = x_T
    for i in (progress(range(1, len(path))) if progress is not None else range(1, len(path))):
        n, m = path[i - 1], path[i]
        if m > n:                                   # RePaint: back up from t_n to t_m
            x = _renoise(x, times[n], times[m], schedule, generator)
            continue
        x, x0 = ancestral_step(eps_fn, x, times[n], times[m], schedule, gamma, generator)
        if x0 is not None:
            return mask * known + (1 - mask) * x0
        s = _time_batch(times[m], x)
        x = mask * q_sample(known, s, _noise_like(x, generator), schedule) + (1 - mask) * x
    return x


def truncated_times(deltas, t_start):
    """The step times of `deltas` below t_start, with t_start itself last: SDEdit's shorter walk."""
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"the start time must be in (0, 1], got {t_start}")
    times = step_times(deltas).tolist()
    return [t for t in times if t < t_start] + [float(t_start)]


@torch.no_grad()
def sdedit_sample(eps_fn, x_init, strength, deltas, schedule, gamma, generator=None, progress=None):
    """SDEdit (Meng et al. 2022): noise the given x_0 to t = strength, then run eq. 4 from there.

    x_s = alpha_s x_init + sigma_s z with s = strength, then the ancestral steps of `deltas` whose
    times lie below s. strength = 1 is plain sampling from x_1 = q_sample(x_init, 1, z) (which, as
    alpha_1 > 0, still holds a trace of x_init); small strengths keep more of the given audio.

    :param x_init: the given [B x C x T] x_0.
    :param strength: s in (0, 1].
    :return: x_0, shaped like x_init.
    """
    _check_gamma(gamma)
    times = truncated_times(deltas, strength)
    x = q_sample(x_init, _time_batch(times[-1], x_init), _noise_like(x_init, generator), schedule)
    for n in _steps(len(times) - 1, progress):
        x, _ = ancestral_step(eps_fn, x, times[n], times[n - 1], schedule, gamma, generator)
    return x
