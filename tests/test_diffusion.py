"""Tests for diffusion.py: schedules (Appendix A.1), Table 7 step schedules, the samplers of eq. 4
checked on Gaussian data where the optimal noise predictor is known in closed form, CFG and
dynamic clipping."""
import itertools
import math

import pytest
import torch

import diffusion as D

# ----------------------------------------------------------------------------------------------
# Noise schedules


@pytest.mark.parametrize("schedule", D.SCHEDULES)
def test_alpha_sigma_variance_preserving_and_monotone(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha, sigma = D.alpha_sigma(t, schedule)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones_like(t), atol=1e-12)
    lam = D.log_snr(t, schedule)
    assert (lam[1:] < lam[:-1]).all()  # lambda_t strictly decreasing: more noise as t grows
    assert (sigma[1:] > sigma[:-1]).all()


def test_cosine_log_snr_endpoints():
    lam = D.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64), "cosine")
    assert abs(lam[0].item() - 20.0) < 1e-6 and abs(lam[1].item() + 20.0) < 1e-6


def test_cosine_matches_eq6():
    t = torch.rand(100, dtype=torch.float64)
    a = math.atan(math.exp(10)) - math.atan(math.exp(-10))
    alpha, _ = D.alpha_sigma(t, "cosine")
    assert torch.allclose(alpha, torch.cos(a * t + math.atan(math.exp(-10))), atol=1e-12)


def test_linear_schedule_is_ddpm_beta_linear():
    """Reaches near-pure noise at t = 1 and is near-clean at t = 0 (the DDPM beta-linear reading, docs/paper-notes.md)."""
    alpha, sigma = D.alpha_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64), "linear")
    assert sigma[0] < 0.011 and alpha[0] > 0.9999  # sigma_0^2 ~= beta_1 = 1e-4
    assert alpha[1] ** 2 < 1e-4  # DDPM's alpha_bar_T ~= 4e-5
    # Continuum limit of 1000 DDPM betas from 1e-4 to 0.02: -ln alpha^2 ~= 0.1 t + 9.95 t^2.
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha, _ = D.alpha_sigma(t, "linear")
    assert torch.allclose(-torch.log(alpha ** 2), 0.1 * t + 9.95 * t ** 2, atol=0.06)


def test_dtype_is_kept():
    t = torch.rand(4)
    assert D.log_snr(t, "cosine").dtype == torch.float32
    assert D.alpha_sigma(t.double(), "linear")[0].dtype == torch.float64
    with pytest.raises(ValueError):
        D.log_snr(t, "quadratic")


@pytest.mark.parametrize("schedule", D.SCHEDULES)
def test_shifted_schedule_is_the_schedule_of_scaled_data(schedule):
    """lambda + 2 ln k on x is the unshifted schedule on k x, renormalized (closed form)."""
    k = 5.0
    name = D.shifted(schedule, 2 * math.log(k))
    assert D.parse_schedule(name) == (schedule, pytest.approx(2 * math.log(k), abs=1e-3))
    assert D.shifted(schedule, 0.0) == schedule and D.parse_schedule(schedule) == (schedule, 0.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(D.log_snr(t, name) - D.log_snr(t, schedule), torch.full_like(t, 3.219), atol=1e-12)
    x, eps = torch.randn(101, 1, 64, dtype=torch.float64), torch.randn(101, 1, 64, dtype=torch.float64)
    alpha, sigma = (v[:, None, None] for v in D.alpha_sigma(t, schedule))
    scaled = (alpha * k * x + sigma * eps) / (alpha ** 2 * k ** 2 + sigma ** 2).sqrt()
    assert torch.allclose(D.q_sample(x, t, eps, f"{schedule}{2 * math.log(k):+.12f}"), scaled, atol=1e-9)
    for bad in ("cosine+", "cosine*2", "sigmoid+1", "+1"):
        with pytest.raises(ValueError):
            D.log_snr(t, bad)


def test_q_sample_broadcasts_over_batch():
    x0, eps = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = D.q_sample(x0, t, eps, "cosine")
    alpha, sigma = D.alpha_sigma(t, "cosine")
    for b in range(3):
        assert torch.allclose(x_t[b], alpha[b] * x0[b] + sigma[b] * eps[b])


def test_diffusion_loss_weightings():
    eps_hat, eps = torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    t = torch.rand(4)
    err = (eps_hat - eps) ** 2
    assert torch.allclose(D.diffusion_loss(eps_hat, eps, t, "linear", "unit"), err.mean())
    sigma2 = D.alpha_sigma(t, "linear")[1] ** 2
    expected = (sigma2[:, None, None] * err).mean()
    assert torch.allclose(D.diffusion_loss(eps_hat, eps, t, "linear", "sigma2"), expected)
    with pytest.raises(ValueError):
        D.diffusion_loss(eps_hat, eps, t, "linear", "snr")


# ----------------------------------------------------------------------------------------------
# Step schedules (Table 7)


def test_table7_lengths_and_sums():
    lengths = {"wave-generator": 1000, "cascader": 800, "spec-generator": 2000, "vocoder": 100,
               "super-res": 800}
    assert {k: len(v) for k, v in D.TABLE7.items()} == lengths
    assert len(D.TABLE7_SPEC_EVAL) == 1000
    for deltas in [*D.TABLE7.values(), D.TABLE7_SPEC_EVAL]:
        assert abs(math.fsum(deltas) - 1.0) < 1e-9


@pytest.mark.parametrize("stage", list(D.TABLE7))
def test_step_schedule_verbatim_and_back_heavy_is_reversed(stage):
    n = len(D.TABLE7[stage])
    assert D.step_schedule("front-heavy", n, stage) == D.TABLE7[stage]
    assert D.step_schedule("back-heavy", n, stage) == D.TABLE7[stage][::-1]
    shrunk = D.step_schedule("front-heavy", 37, stage)
    assert D.step_schedule("back-heavy", 37, stage) == shrunk[::-1]


def test_spec_eval_schedule():
    assert D.step_schedule("back-heavy-eval", 1000, "spec-generator") == D.TABLE7_SPEC_EVAL
    with pytest.raises(ValueError):
        D.step_schedule("back-heavy-eval", 1000, "vocoder")


@pytest.mark.parametrize("name", ["uniform", "front-heavy", "back-heavy"])
@pytest.mark.parametrize("n", [1, 7, 50, 200, 3000])
def test_named_schedules_sum_to_one_and_are_positive(name, n):
    deltas = D.step_schedule(name, n)
    assert len(deltas) == n and min(deltas) > 0
    assert abs(math.fsum(deltas) - 1.0) < 1e-9


@pytest.mark.parametrize("stage", list(D.TABLE7))
def test_shrinking_keeps_the_shape(stage):
    n = 50
    times = D.step_times(D.step_schedule("front-heavy", n, stage))
    assert (times[1:] > times[:-1]).all()
    assert (times[1:] < 0.1).sum() > n // 2  # front-heavy: most steps near t = 0
    # The shrunk times follow the full list's t_n at the same step fractions.
    full = D.step_times(D.TABLE7[stage])
    idx = torch.arange(0, n + 1) * len(D.TABLE7[stage]) // n
    assert torch.allclose(times, full[idx], atol=1e-12)
    back = D.step_times(D.step_schedule("back-heavy", n, stage))
    assert (back[:-1] > 0.9).sum() > n // 2  # back-heavy: most steps near t = 1


def test_load_deltas(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# a schedule\n0.25, 0.25\n0.25 0.2500001\n")
    deltas = D.load_deltas(good)
    assert len(deltas) == 4 and abs(math.fsum(deltas) - 1.0) < 1e-12
    for bad_text in ["", "0.5 0.4", "0.5 0.6 -0.1", "0.5 abc 0.5", "0.5 nan 0.5"]:
        bad = tmp_path / "bad.txt"
        bad.write_text(bad_text)
        with pytest.raises(ValueError):
            D.load_deltas(bad)


def test_step_times_rejects_bad_deltas():
    for bad in ([], [0.5, 0.4], [1.2, -0.2]):
        with pytest.raises(ValueError):
            D.step_times(bad)


# ----------------------------------------------------------------------------------------------
# Samplers on Gaussian data: x ~ N(mu, s^2), so x_t ~ N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2)
# and the optimal noise predictor is E[eps | x_t] = sigma_t (x_t - alpha_t mu) / (alpha_t^2 s^2 +
# sigma_t^2). A correct sampler fed this predictor must return N(mu, s^2).

MU, S, N_SAMPLES, N_STEPS = 0.5, 0.5, 20000, 200
# Sampling error with n = 20000: std error of the mean s / sqrt(n) = 0.0035, of the std
# s / sqrt(2n) = 0.0025; we allow 5 of each (a false failure has probability ~1e-6).
TOL_MEAN = 5 * S / math.sqrt(N_SAMPLES)
TOL_STD = 5 * S / math.sqrt(2 * N_SAMPLES)
# Plus a discretisation allowance on both: with 200 steps the samplers are not exact. For this
# data the exact discrete-time output std (closed form, see `_closed_form_moments`) is off by at
# most 0.017 for uniform and front-heavy steps (cosine and linear, gamma 0 or 1, DDIM), and by up
# to 0.066 for back-heavy at gamma = 0, which leaves only ~10 steps for t < 0.5 where each coarse
# ancestral step loses the variance of x | x_t. Means are off by less than 0.002.
ALLOWANCE = {"uniform": 0.025, "front-heavy": 0.025, "back-heavy": 0.08}


def _optimal_eps_fn(schedule, scale=1.0):
    """E[eps | x_t] for x ~ N(MU, S^2); scale != 1 gives a deliberately wrong predictor."""
    def eps_fn(x_t, t):
        alpha, sigma = D.alpha_sigma(t[:1], schedule)  # the same t across the batch
        return scale * sigma * (x_t - alpha * MU) / (alpha ** 2 * S ** 2 + sigma ** 2)
    return eps_fn


def _run(sampler, schedule, name, scale=1.0):
    """Draw N_SAMPLES outputs of `sampler` ('ddim', 'dpmpp-2m' or a gamma) with a fixed seed."""
    g = torch.Generator().manual_seed(1234)
    x_T = torch.randn(N_SAMPLES, 1, 1, generator=g, dtype=torch.float64)
    eps_fn, deltas = _optimal_eps_fn(schedule, scale), D.step_schedule(name, N_STEPS)
    if isinstance(sampler, str):
        return D.run_sampler(sampler, eps_fn, x_T, deltas, schedule, 0.0)
    return D.sample(eps_fn, x_T, deltas, schedule, sampler, generator=g)


def _misses(x, name):
    allowance = ALLOWANCE[name]
    return (abs(x.mean().item() - MU) > TOL_MEAN + allowance
            or abs(x.std().item() - S) > TOL_STD + allowance)


CASES = [("cosine", name, sampler) for name in ALLOWANCE for sampler in (0.0, 1.0, "ddim", "dpmpp-2m")]
CASES += [("linear", name, sampler) for name in ("uniform", "front-heavy")
          for sampler in (0.0, 1.0, "ddim", "dpmpp-2m")]


@pytest.mark.parametrize("schedule,name,sampler", CASES)
def test_samplers_recover_gaussian(schedule, name, sampler):
    x = _run(sampler, schedule, name)
    assert not _misses(x, name), (x.mean().item(), x.std().item())


@pytest.mark.parametrize("sampler", [0.0, 1.0, "ddim", "dpmpp-2m"])
def test_gaussian_check_can_fail(sampler):
    x = _run(sampler, "cosine", "uniform", scale=0.5)
    assert _misses(x, "uniform")


def _closed_form_moments(name, gamma):
    """Mean and std of eq. 4's output for Gaussian data and the cosine schedule, in closed form.

    Written from Appendix A independently of diffusion.py: every step is linear in x_t with
    Gaussian noise, so the mean m and variance v propagate exactly (the last step adds no noise
    and lands on the data: alpha_s = 1, sigma_s = 0).
    """
    a, b = math.atan(math.exp(10)) - math.atan(math.exp(-10)), math.atan(math.exp(-10))
    times = [0.0] + list(itertools.accumulate(D.step_schedule(name, N_STEPS)))
    m, v = 0.0, 1.0
    for n in range(N_STEPS, 0, -1):
        (al_t, sg_t), (al_s, sg_s) = [(math.cos(a * u + b), math.sin(a * u + b))
                                     for u in (times[n], times[n - 1])]
        if n == 1:
            al_s, sg_s = 1.0, 0.0
        one_minus_r = 1.0 - (al_t * sg_s / (sg_t * al_s)) ** 2  # 1 - e^{lambda_t - lambda_s}
        k = sg_t / (al_t ** 2 * S ** 2 + sg_t ** 2)  # eps_hat = k (x_t - al_t MU)
        gain = al_s / al_t * (1.0 - one_minus_r * sg_t * k)
        m = gain * m + al_s / al_t * one_minus_r * sg_t * k * al_t * MU
        var_tilde, var_fwd = one_minus_r * sg_s ** 2, one_minus_r * sg_t ** 2  # eq. 3
        noise = var_tilde ** ((1 - gamma) / 2) * var_fwd ** (gamma / 2)
        v = gain ** 2 * v + (noise ** 2 if n > 1 else 0.0)
    return m, math.sqrt(v)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sampler_matches_closed_form_moments(gamma):
    """No allowance here: the sampler must match the exact discrete-time moments to 5 std errors."""
    x = _run(gamma, "cosine", "back-heavy")
    m, sd = _closed_form_moments("back-heavy", gamma)
    assert abs(x.mean().item() - m) < TOL_MEAN and abs(x.std().item() - sd) < TOL_STD
    # and the check can tell gamma = 0 from gamma = 1 (they differ, and both are stochastic)
    assert abs(_closed_form_moments("back-heavy", 0.0)[1]
               - _closed_form_moments("back-heavy", 1.0)[1]) > 4 * TOL_STD


def test_gamma0_is_stochastic_and_not_ddim():
    eps_fn, deltas = _optimal_eps_fn("cosine"), D.step_schedule("uniform", 20)
    x_T = torch.randn(8, 1, 4, generator=torch.Generator().manual_seed(0))
    x1 = D.sample(eps_fn, x_T, deltas, "cosine", 0.0, generator=torch.Generator().manual_seed(1))
    x2 = D.sample(eps_fn, x_T, deltas, "cosine", 0.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(x1, x2)
    assert not torch.allclose(x1, D.ddim_sample(eps_fn, x_T, deltas, "cosine"))
    with pytest.raises(ValueError):
        D.sample(eps_fn, x_T, deltas, "cosine", 1.5)


@pytest.mark.parametrize("sampler", [0.0, 1.0, "ddim", "dpmpp-2m"])
def test_last_step_lands_on_the_data(sampler):
    """With an exact predictor for a point mass, the output is the point itself, to float precision.

    (Eq. 4's mean towards t = 0 would keep sigma_0 = 0.01 of the noise under the linear schedule.)
    """
    c = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64)[None, None]
    def eps_fn(x_t, t):
        alpha, sigma = D.alpha_sigma(t[:1].double(), "linear")
        return (x_t - alpha * c) / sigma
    x_T = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    deltas = D.step_schedule("front-heavy", 10, "vocoder")
    x = (D.run_sampler(sampler, eps_fn, x_T, deltas, "linear", 0.0) if isinstance(sampler, str)
         else D.sample(eps_fn, x_T, deltas, "linear", sampler, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(x, c.expand_as(x), rtol=0, atol=1e-9)


# The probability-flow ODE of Gaussian data, solved exactly: along it (x_t - alpha_t MU) /
# sqrt(alpha_t^2 S^2 + sigma_t^2) stays constant, so x_T at t = 1 maps to MU + S z at the data.
ODE_SCHEDULES = ["cosine", "linear", D.shifted("cosine", 3.219), D.shifted("linear", 3.219)]
Z = torch.linspace(-3, 3, 61, dtype=torch.float64)[None, None]       # (1, 1, 61) points of the map


def _ode_start(schedule):
    """x_1 on the ODE's trajectories through the points Z: alpha_1 MU + sqrt(alpha_1^2 S^2 + sigma_1^2) Z."""
    a, s = D.alpha_sigma(torch.tensor([1.0], dtype=torch.float64), schedule)
    return a * MU + (a ** 2 * S ** 2 + s ** 2).sqrt() * Z


def _t_of_log_snr(lam, schedule):
    """The inverse of log_snr, in closed form for both schedules (and their shifts)."""
    base, shift = D.parse_schedule(schedule)
    lam = lam - shift
    if base == "cosine":
        return (torch.atan(torch.exp(-lam / 2)) - D._COSINE_B) / D._COSINE_A
    return ((torch.log1p(torch.exp(-lam)) - 1e-4) / 10).sqrt()


def _log_snr_uniform_deltas(n, schedule, t_1):
    """n + 1 steps: t_1 fixed, t_1 < ... < t_{n+1} = 1 uniform in lambda, then the step to t_0 = 0.

    A step size that varies smoothly in lambda, as the convergence order of a multistep solver
    assumes; t_1 stays put as n doubles, so the last step's data estimate is the same function.
    """
    ends = D.log_snr(torch.tensor([1.0, t_1], dtype=torch.float64), schedule)
    t = _t_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), n + 1, dtype=torch.float64), schedule)
    t = torch.cat([torch.zeros(1, dtype=torch.float64), t.flip(0)])
    t[-1] = 1.0
    return (t[1:] - t[:-1]).tolist()


@pytest.mark.parametrize("schedule", ODE_SCHEDULES)
def test_dpmpp_2m_follows_the_probability_flow_ode(schedule):
    """DPM-Solver++(2M) with 200 uniform steps maps x_1 to the exact ODE solution MU + S z, and is
    several times closer to it than DDIM (first order) at the same steps."""
    deltas, exact = D.step_schedule("uniform", 200), MU + S * Z
    x = D.dpmpp_2m_sample(_optimal_eps_fn(schedule), _ode_start(schedule), deltas, schedule)
    ddim = D.ddim_sample(_optimal_eps_fn(schedule), _ode_start(schedule), deltas, schedule)
    err, err_ddim = (x - exact).abs().max().item(), (ddim - exact).abs().max().item()
    assert err < 3e-3 and err < err_ddim / 4, (err, err_ddim)


def _convergence_slope(sampler, schedule, ns=(20, 40, 80, 160), t_1=0.02):
    """The fitted slope of log(max error) against log(steps), the reference being the exact ODE
    solution to t_1 followed by the same last step (the exact data estimate at t_1)."""
    a, s = D.alpha_sigma(torch.tensor([t_1], dtype=torch.float64), schedule)
    reference = MU + a * S ** 2 * Z / (a ** 2 * S ** 2 + s ** 2).sqrt()    # E[x | x_{t_1}] on the ODE
    errors = []
    for n in ns:
        x = D.run_sampler(sampler, _optimal_eps_fn(schedule), _ode_start(schedule),
                          _log_snr_uniform_deltas(n, schedule, t_1), schedule, 0.0)
        errors.append((x - reference).abs().max().item())
    log_n, log_e = torch.log(torch.tensor(ns, dtype=torch.float64)), torch.log(torch.tensor(errors))
    slope = ((log_n - log_n.mean()) * (log_e - log_e.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum()
    return float(slope), errors


@pytest.mark.parametrize("schedule", ODE_SCHEDULES)
def test_dpmpp_2m_is_second_order_and_ddim_first(schedule):
    """Steps doubling from 20 to 160: DPM-Solver++(2M)'s error falls as steps^-2, DDIM's as steps^-1."""
    slope, errors = _convergence_slope("dpmpp-2m", schedule)
    slope_ddim, errors_ddim = _convergence_slope("ddim", schedule)
    print(f"{schedule}: dpmpp-2m slope {slope:.2f} errors {errors}; ddim slope {slope_ddim:.2f} errors {errors_ddim}")
    assert slope <= -1.8, (slope, errors)
    assert -1.15 <= slope_ddim <= -0.85, (slope_ddim, errors_ddim)


def test_dpmpp_2m_sees_the_clipped_x0():
    """CFG and dynamic clipping reach the solver exactly: the x_0 it forms from the wrapped eps is
    dynamic_clip of the model's x_0 (float64, to rounding), at high and low noise alike, and its
    output (the last data estimate) lies in [-1, 1]."""
    schedule = D.shifted("cosine", 3.219)
    loud = lambda x_t, t: (x_t - D._expand(D.alpha_sigma(t, schedule)[0], x_t) * 3.0 * torch.sin(  # noqa: E731
        torch.arange(x_t.shape[-1], dtype=x_t.dtype))) / D._expand(D.alpha_sigma(t, schedule)[1], x_t)
    clipped = D.clipped_eps_fn(loud, schedule)
    x_t = torch.randn(2, 1, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.999, 0.5, 0.05, 0.001):
        tb = torch.full((2,), t, dtype=torch.float64)
        x0 = D.x0_from_eps(x_t, clipped(x_t, tb), tb, schedule)
        torch.testing.assert_close(x0, D.dynamic_clip(D.x0_from_eps(x_t, loud(x_t, tb), tb, schedule)),
                                   rtol=0, atol=1e-9)
    out = D.dpmpp_2m_sample(clipped, x_t, D.step_schedule("uniform", 20), schedule)
    loud_x0 = 3.0 * torch.sin(torch.arange(256, dtype=torch.float64)).expand_as(x_t)
    torch.testing.assert_close(out, D.dynamic_clip(loud_x0), rtol=0, atol=1e-9)
    assert out.abs().max() <= 1.0 + 1e-9


def test_run_sampler_names():
    eps_fn, x_T = _optimal_eps_fn("cosine"), torch.randn(2, 1, 8, dtype=torch.float64)
    deltas = D.step_schedule("uniform", 5)
    assert torch.equal(D.run_sampler("ddim", eps_fn, x_T, deltas, "cosine", 0.0),
                       D.ddim_sample(eps_fn, x_T, deltas, "cosine"))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(D.run_sampler("ancestral", eps_fn, x_T, deltas, "cosine", 1.0, g1),
                       D.sample(eps_fn, x_T, deltas, "cosine", 1.0, g2))
    with pytest.raises(ValueError, match="unknown sampler"):
        D.run_sampler("euler", eps_fn, x_T, deltas, "cosine", 0.0)


def test_last_step_adds_no_noise():
    """The step to s = 0 returns eq. 4's mean (Ho et al. 2020): one step is deterministic."""
    eps_fn, x_T = _optimal_eps_fn("linear"), torch.randn(4, 1, 8)
    outs = [D.sample(eps_fn, x_T, [1.0], "linear", 1.0, generator=torch.Generator().manual_seed(i))
            for i in range(2)]
    assert torch.equal(outs[0], outs[1])


def test_sampler_times_and_progress():
    """eps_fn sees (B,) times t_N = 1, ..., t_1 in x_T's dtype; progress wraps the step loop."""
    seen, wrapped = [], []
    def eps_fn(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)
    def progress(it):
        wrapped.append(len(it))
        return it
    deltas = D.step_schedule("front-heavy", 5, "vocoder")
    D.sample(eps_fn, torch.randn(3, 2, 4), deltas, "linear", 1.0, progress=progress)
    expected = D.step_times(deltas)[1:].flip(0)
    assert wrapped == [5] and all(t.shape == (3,) and t.dtype == torch.float32 for t in seen)
    assert torch.allclose(torch.stack([t[0] for t in seen]).double(), expected)


def test_projected_eps_fn_replaces_x0_above_its_time():
    """Above `above`, the implied x_0 is project(x_0) exactly; at or below it eps is untouched."""
    c = torch.linspace(-0.3, 0.3, 8, dtype=torch.float64)[None, None]
    eps_fn = lambda x_t, t: 0.5 * x_t
    wrapped = D.projected_eps_fn(eps_fn, "linear", lambda x0: c.expand_as(x0), above=0.2)
    x_t = torch.randn(3, 1, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.9, 0.3):
        tb = torch.full((3,), t, dtype=torch.float64)
        torch.testing.assert_close(D.x0_from_eps(x_t, wrapped(x_t, tb), tb, "linear"), c.expand_as(x_t))
    for t in (0.2, 0.05):
        tb = torch.full((3,), t, dtype=torch.float64)
        assert torch.equal(wrapped(x_t, tb), eps_fn(x_t, tb))


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance and dynamic clipping


def test_cfg_w1_is_conditional():
    eps_c, eps_u = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    assert torch.equal(D.cfg_eps(eps_c, eps_u, 1.0), eps_c)
    assert torch.equal(D.cfg_eps(eps_c, eps_u, 0.0), eps_u)
    assert torch.allclose(D.cfg_eps(eps_c, eps_u, 5.0), eps_u + 5.0 * (eps_c - eps_u))


def test_dynamic_clip():
    x0 = torch.randn(4, 2, 1000) * torch.tensor([0.1, 1.0, 3.0, 10.0])[:, None, None]
    clipped = D.dynamic_clip(x0)
    assert clipped.abs().max() <= 1.0
    assert torch.equal(clipped[0], x0[0])  # already inside [-1, 1]: s = max(s, 1) = 1, unchanged
    s = torch.quantile(x0[3].abs().flatten(), D.DEFAULT_CLIP_PERCENTILE)
    assert torch.allclose(clipped[3], x0[3].clamp(-s, s) / s)
    with pytest.raises(ValueError):
        D.dynamic_clip(x0, 99.5)


def test_row_quantile_matches_torch():
    a = torch.randn(3, 777)
    for q in (0.0, 0.5, 0.995, 1.0):
        assert torch.allclose(D._row_quantile(a, q), torch.quantile(a, q, dim=1))


def test_guided_eps_fn():
    x_t, t = torch.randn(2, 1, 64), torch.tensor([0.3, 0.9])
    eps_c, eps_u = torch.randn(2, 1, 64), torch.randn(2, 1, 64)
    pair = lambda x, tt: (eps_c, eps_u)  # noqa: E731
    assert torch.equal(D.guided_eps_fn(pair, 1.0, "cosine", percentile=None)(x_t, t), eps_c)
    two = D.eps_pair(lambda x, tt: eps_c, lambda x, tt: eps_u)
    guided = D.guided_eps_fn(two, 5.0, "cosine", percentile=None)(x_t, t)
    assert torch.equal(guided, D.cfg_eps(eps_c, eps_u, 5.0))
    # With clipping: the returned eps implies an x_0 inside [-1, 1] (float64: with w = 10 the
    # float32 round trip x_0 -> eps -> x_0 loses ~1e-5) ...
    pair64 = lambda x, tt: (eps_c.double(), eps_u.double())  # noqa: E731
    eps = D.guided_eps_fn(pair64, 10.0, "cosine")(x_t.double(), t.double())
    assert D.x0_from_eps(x_t.double(), eps, t.double(), "cosine").abs().max() <= 1.0 + 1e-12
    # ... and where clipping changes nothing (x_0 already in [-1, 1]), eps passes through exactly.
    alpha, sigma = D.alpha_sigma(t, "cosine")
    x0 = torch.rand(2, 1, 64) * 1.8 - 0.9
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps_c
    assert torch.equal(D.guided_eps_fn(pair, 1.0, "cosine")(x_t, t), eps_c)
