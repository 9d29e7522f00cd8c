"""Audio in: known-region sampling (replacement, RePaint), SDEdit, and the cascade's audio-in modes."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import cascade
import data
import diffusion
import sample
import text
import toy_corpus
from tests.helpers import train_tiny_cascade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here: on a loaded 2-core machine two threads made these calls ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# Samplers, on a Gaussian whose posterior is known in closed form

T, SCHEDULE = 16, "cosine"
COV = torch.ones(T, T, dtype=torch.float64) + 1e-4 * torch.eye(T, dtype=torch.float64)   # x_0 ~ N(0, COV): nearly constant


def gaussian_eps(x, t):
    """The exact eps_hat for x_0 ~ N(0, COV): E[x_0 | x_t] = alpha COV (alpha^2 COV + sigma^2 I)^-1 x_t."""
    alpha, sigma = diffusion.alpha_sigma(t[0].double(), SCHEDULE)
    x0 = alpha * COV @ torch.linalg.solve(alpha ** 2 * COV + sigma ** 2 * torch.eye(T, dtype=torch.float64), x[:, 0].T)
    return ((x[:, 0] - alpha * x0.T) / sigma)[:, None]


def _known_half(jump, resample, steps=10, batch=256, gamma=0.0, guidance=0.0):
    known = torch.full((1, 1, T), 0.7, dtype=torch.float64)
    mask = (torch.arange(T) < T // 2)[None, None]
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(batch, 1, T, dtype=torch.float64, generator=g)
    x = diffusion.known_region_sample(gaussian_eps, x_T, diffusion.step_schedule("uniform", steps), SCHEDULE, gamma,
                                      known, mask, jump, resample, generator=g, guidance=guidance)
    return x, known


@pytest.mark.parametrize("jump,resample,guidance", [(0, 1, 0.0), (2, 3, 0.0), (0, 1, 2.0)])
def test_known_region_keeps_the_known_part_exactly(jump, resample, guidance):
    x, known = _known_half(jump, resample, batch=4, gamma=1.0, guidance=guidance)
    assert torch.equal(x[..., :T // 2], known.expand(4, 1, T)[..., :T // 2])
    assert torch.isfinite(x).all() and not torch.equal(x[..., T // 2:], known.expand(4, 1, T)[..., T // 2:])


def test_repaint_fits_the_known_part_better_than_replacement():
    """The exact posterior of the unknown half is ~0.7 everywhere; plain replacement, which sees the
    known half only through the noisy x_t, is pulled towards the prior's 0; RePaint's resampling is not."""
    plain, _ = _known_half(0, 1)
    repaint, _ = _known_half(1, 5)
    bias = lambda x: float(x[..., T // 2:].mean() - 0.7)
    assert bias(plain) < -0.04
    assert abs(bias(repaint)) < 0.02


def test_reconstruction_guidance_fits_the_known_part_better_than_replacement():
    """As above, with the gradient of the known half's fit steering the unknown half (Ho et al. 2022):
    at weight 1 and 2 the bias of plain replacement (-0.06 at 10 steps) all but goes, and the
    unknown half's spread shrinks towards the posterior's (std ~0.01)."""
    plain, _ = _known_half(0, 1)
    bias = lambda x: float(x[..., T // 2:].mean() - 0.7)
    spread = lambda x: float(x[..., T // 2:].std())
    for weight in (1.0, 2.0):
        guided, _ = _known_half(0, 1, guidance=weight)
        assert abs(bias(guided)) < 0.015 and spread(guided) < spread(plain) / 3, (weight, bias(guided), spread(guided))
    assert bias(plain) < -0.04


def test_repaint_path():
    assert diffusion.repaint_path(5) == [5, 4, 3, 2, 1, 0]
    path = diffusion.repaint_path(10, jump=2, resample=3)
    assert path[0] == 10 and path[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(path, path[1:]))
    # every multiple of the jump below N - jump is left upwards twice: (r - 1) * j extra steps down each
    assert sum(b < a for a, b in zip(path, path[1:])) == 10 + 4 * 2 * 2


def test_sdedit_at_strength_one_is_plain_sampling_from_the_noised_input():
    x_init = torch.randn(3, 1, T, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    deltas = diffusion.step_schedule("uniform", 8)
    a = diffusion.sdedit_sample(gaussian_eps, x_init, 1.0, deltas, SCHEDULE, 1.0, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x_1 = diffusion.q_sample(x_init, torch.ones(3, dtype=torch.float64), torch.randn(x_init.shape, dtype=x_init.dtype, generator=g),
                             SCHEDULE)
    b = diffusion.sample(gaussian_eps, x_1, deltas, SCHEDULE, 1.0, generator=g)
    assert torch.equal(a, b)


def test_sdedit_keeps_more_of_the_input_at_low_strength():
    """On the nearly-constant Gaussian, a constant input of 0.7 stays near 0.7 at low strength and
    forgets it (back to the prior's N(0, 1) level) at strength 1."""
    x_init = torch.full((256, 1, T), 0.7, dtype=torch.float64)
    deltas = diffusion.step_schedule("uniform", 20)
    out = {s: diffusion.sdedit_sample(gaussian_eps, x_init, s, deltas, SCHEDULE, 0.0, torch.Generator().manual_seed(0))
           for s in (0.2, 1.0)}
    err = {s: float((x - 0.7).abs().mean()) for s, x in out.items()}
    assert err[0.2] < 0.15 and err[1.0] > 0.4, err
    assert diffusion.truncated_times(deltas, 0.2)[-1] == 0.2 and len(diffusion.truncated_times(deltas, 0.2)) == 5


# ------------------------------------------------------------------------------------------------
# The cascade's audio-in modes, on checkpoints trained for one step

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_cascade(tmp_path_factory.mktemp("beyond"))


@pytest.fixture(scope="module")
def models(ckpt):
    stages = {s: cascade.StageModel(os.path.join(ckpt, f"{s}.pt")) for s in cascade.STAGES}
    for s in ("wave-generator", "spec-generator"):       # 0.5 s generator windows, to keep the tests fast
        stages[s].spec = dataclasses.replace(stages[s].spec, clip_seconds=0.5)
    return stages, text.load_t5(stages["wave-generator"].t5)


KNOBS = {s: cascade.Sampling(steps=2) for s in cascade.STAGES}


def _clip(seconds=0.6):
    t = torch.arange(int(seconds * cascade.GIVEN_RATE), dtype=torch.float64) / cascade.GIVEN_RATE
    return (0.2 * torch.sin(2 * np.pi * 330 * t) * torch.sin(2 * np.pi * 1.5 * t)).float()


def _generate(models, pipeline, task, seconds=0.0, prompts=("a slow piano tune", "fast drums")):
    return cascade.audio_generate(models[0], models[1], list(prompts), pipeline, seconds, 0, KNOBS, task)


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_continuation_starts_with_the_given_audio(models, pipeline):
    clip = _clip()
    out = _generate(models, pipeline, cascade.AudioTask("continue", clip, overlap=0.25), seconds=1.2)
    assert out.shape == (2, round(1.2 * 24000)) and torch.isfinite(out).all()
    assert torch.equal(out[:, :len(clip)], clip.expand(2, -1))


def test_inpainting_keeps_everything_outside_the_region(models):
    clip = _clip(1.0)
    out = _generate(models, "wave", cascade.AudioTask("inpaint", clip, region=(0.3, 0.6), fit=cascade.KnownFit(1, 2)))
    a, b = round(0.3 * 24000), round(0.6 * 24000)
    assert out.shape == (2, len(clip))
    assert torch.equal(out[:, :a], clip[:a].expand(2, -1)) and torch.equal(out[:, b:], clip[b:].expand(2, -1))
    assert not torch.allclose(out[:, a:b], clip[a:b].expand(2, -1), atol=1e-3)


def test_inpainting_cross_fades_into_the_region_and_keeps_the_rest_exactly():
    mask = torch.ones(1, 1, 40, dtype=torch.bool)
    mask[..., 10:30] = False
    given = cascade.Given(known=torch.zeros(1, 1, 40), mask=mask, fade=4)
    out = given.keep_known(torch.ones(2, 1, 40))[0, 0]
    assert torch.equal(out[:10], torch.zeros(10)) and torch.equal(out[30:], torch.zeros(10))
    ramp = out[10:15]                               # rising from the known 0 to the generated 1
    assert torch.all(ramp[1:] > ramp[:-1]) and 0 < ramp[0] < 0.2 and ramp[-1] == 1
    assert torch.allclose(out[10:30], out[10:30].flip(0)) and torch.equal(out[14:26], torch.ones(12))
    no_fade = cascade.Given(known=torch.zeros(1, 1, 40), mask=mask).keep_known(torch.ones(2, 1, 40))[0, 0]
    assert torch.equal(no_fade[10:30], torch.ones(20))


def test_long_form_windows_join_on_their_known_part(models, monkeypatch):
    """Each generator window's first `overlap` samples are the previous window's last ones but for its
    last EDGE_SECONDS, which the next window regenerates."""
    gen = models[0]["wave-generator"]
    seen = []
    run = cascade.run_stage

    def spy(stage, knobs, shape, generator, *args, given=None, **kw):
        x = run(stage, knobs, shape, generator, *args, given=given, **kw)
        if stage is gen:
            seen.append((x, given))
        return x
    monkeypatch.setattr(cascade, "run_stage", spy)
    out = _generate(models, "wave", cascade.AudioTask("long", overlap=0.125), seconds=1.25)
    assert out.shape == (2, 30000) and torch.isfinite(out).all()
    edge = 96                                                   # EDGE_SECONDS at 3.2 kHz
    assert len(seen) == 4 and seen[0][1] is None               # windows start at 0, 1104, 2208, 3312 samples
    for (prev, _), (x, given) in zip(seen, seen[1:]):
        assert int(given.mask.sum()) == 400                     # 0.125 s at 3.2 kHz
        assert torch.equal(x[..., :400], prev[..., -400 - edge:-edge])


def test_cascade_generate_past_the_clip_length_is_the_long_form(models):
    """Any caller (sample.py, app.py, the benches) asking for more than a generator window gets the
    windows, not one pass over a longer tensor than the generator was trained on."""
    prompts = ["a slow piano tune", "fast drums"]
    plain = cascade.cascade_generate(models[0], models[1], prompts, "spec", 1.25, 0, KNOBS)
    assert torch.equal(plain, _generate(models, "spec", cascade.AudioTask("long", overlap=0.25), seconds=1.25))


# 1.25009375 s: each stage's length rounded on its own (3.2 kHz: 4000 samples, 16 kHz: 20002; 100 fps:
# 125 frames, 20000 samples at 16 kHz) leaves the next stage's input two samples short of its output.
AWKWARD_SECONDS = 4000.3 / 3200


@pytest.mark.parametrize("pipeline,mode", [("wave", "long"), ("spec", "long"), ("wave", "continue"), ("spec", "continue")])
def test_every_stage_has_the_plain_lengths_and_no_padded_tail(models, monkeypatch, pipeline, mode):
    """Long-form and continued outputs are exactly the requested length, every stage is as long as
    stage_lengths says (as in cascade_generate), and no stage's conditioning input or known audio ends
    in zeros (an input shorter than its stage, zero-padded, would make a silent tail there)."""
    seen = []
    run = cascade.run_stage

    def spy(stage, knobs, shape, generator, *args, given=None, **route):
        inputs = [v for k, v in route.items() if k == "cond"]
        if given is not None and given.mask is not None:
            inputs.append(given.known[given.mask.expand_as(given.known)])
        seen.append((stage.spec.name, inputs))
        return run(stage, knobs, shape, generator, *args, given=given, **route)
    monkeypatch.setattr(cascade, "run_stage", spy)
    clip = _clip(0.61)[:14641]                   # not a whole number of 16 kHz samples or 100 fps frames
    task = cascade.AudioTask(mode, clip if mode == "continue" else None, overlap=0.125)
    keep = {}
    out = cascade.audio_generate(models[0], models[1], ["a slow piano tune"], pipeline, AWKWARD_SECONDS, 0, KNOBS, task,
                                 keep=keep)
    names = cascade.PIPELINES[pipeline]
    lengths = cascade.stage_lengths(models[0][names[0]].spec, AWKWARD_SECONDS)
    assert out.shape == (1, round(AWKWARD_SECONDS * 24000)) and torch.isfinite(out).all()
    assert [keep[name].shape[-1] for name in names] == list(lengths)
    later = [x for name, inputs in seen if name in names[1:] for x in inputs]
    assert later and all(bool((x[..., -2:] != 0).all()) for x in later)
    if mode == "continue":
        assert torch.equal(out[0, :len(clip)], clip)


def test_sdedit_and_upsample_give_the_clip_length(models):
    clip = _clip()
    for task in (cascade.AudioTask("init", clip, strength=0.5), cascade.AudioTask("upsample", clip, 8000),
                 cascade.AudioTask("upsample", clip, 16000)):
        out = _generate(models, "wave", task)
        assert out.shape == (2, len(clip)) and torch.isfinite(out).all()


@pytest.mark.parametrize("rate,edge", [(3200, 1500), (8000, 3900), (16000, 7900)])
def test_upsampling_keeps_the_given_band(models, rate, edge):
    """The given clip's band (below its Nyquist frequency) comes out unchanged: the stages add only
    the band above it (the cascader's and super-res's keep_input_band)."""
    clip = data.fft_resample(data.fft_resample(_clip(0.6).double(), 24000, rate), rate, 24000).float()
    out = _generate(models, "wave", cascade.AudioTask("upsample", clip, rate))
    low = torch.fft.rfftfreq(len(clip), 1 / 24000) < edge
    given, made = torch.fft.rfft(clip.double())[low], torch.fft.rfft(out.double(), dim=-1)[:, low]
    assert float((made - given).abs().max()) < 1e-4 * float(given.abs().max())
    high = ~low & (torch.fft.rfftfreq(len(clip), 1 / 24000) > rate / 2)
    assert float(torch.fft.rfft(out.double(), dim=-1)[:, high].abs().max()) > 0      # something was added above


# ------------------------------------------------------------------------------------------------
# Bad input: one line on stderr and exit status 2, before any model is loaded

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio_in")
    t = np.arange(22050 * 2) / 22050
    sf.write(folder / "ok.flac", np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 110 * t)], 1) * 0.2, 22050)
    sf.write(folder / "short.wav", 0.2 * np.sin(2 * np.pi * 220 * t[:2000]), 22050)
    (folder / "junk.wav").write_bytes(b"not audio at all" * 10)
    return folder


@pytest.mark.parametrize("args,words", [
    (["--init", "{d}/junk.wav"], "not readable"),
    (["--continue", "{d}"], "a folder, not an audio file"),
    (["--upsample", "{d}/short.wav"], "too short"),
    (["--inpaint", "{d}/ok.flac", "--region", "1.5:2.5"], "outside the clip"),
    (["--inpaint", "{d}/ok.flac", "--region", "1.5:0.5"], "START must come before END"),
    (["--inpaint", "{d}/ok.flac", "--region", "1:1.001"], "at least 0.1 s"),
    (["--upsample", "{d}/ok.flac", "--pipeline", "spec"], "does not go with it"),
    (["--inpaint", "{d}/ok.flac", "--region", "abc"], "START:END"),
    (["--inpaint", "{d}/ok.flac"], "needs --region"),
    (["--region", "0:1"], "goes with --inpaint"),
    (["--init", "{d}/ok.flac", "--strength", "0"], "(0, 1]"),
    (["--init", "{d}/ok.flac", "--continue", "{d}/ok.flac"], "at most one"),
    (["--continue", "{d}/ok.flac", "--seconds", "1"], "longer than"),
    (["--continue", "{d}/ok.flac", "--reconstruction-guidance", "nan"], ">= 0"),
    (["--describe"], "go with one of"),
    (["--continue", "{d}/ok.flac", "--no-describe", "--labels", "{d}/ok.flac"], "goes with --describe"),
    (["--continue", "{d}/ok.flac", "--labels", "{d}/junk.wav"], "not a readable JSON"),
    (["--continue", "{d}/ok.flac", "--describe", "--labels", "{d}/junk.wav"], "not a readable JSON"),
    (["--continue", "{d}/ok.flac", "--describe", "--ckpt-dir", "{d}"], "mulan.pt: not found"),
])
def test_bad_audio_input_is_one_line_and_exit_2(files, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["a tune", *[a.format(d=files) for a in args]])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]


def test_a_good_file_is_read_mixed_down_and_resampled(files):
    args, _ = sample.parse_args(["a tune", "--inpaint", str(files / "ok.flac"), "--region", "0.5:1"])
    assert args.task.mode == "inpaint" and args.task.region == (0.5, 1.0) and args.task.rate == 22050
    assert args.task.audio.shape == (48000,)                     # 2 s at 24 kHz, one channel


def test_reconstruction_guidance_defaults(files):
    """On for inpainting and for a continuation whose prompt is not given the clip's labels, off for a
    described continuation (the default with a MuLan at hand) and long-form, the flag's value wherever given."""
    ok = str(files / "ok.flac")
    described = sample.parse_args(["a tune", "--continue", ok])[0]
    assert described.describe and described.task.fit.guidance == 0
    assert sample.parse_args(["a tune", "--continue", ok, "--no-describe"])[0].task.fit.guidance == sample.DEFAULT_GUIDANCE > 0
    assert sample.parse_args(["a tune", "--continue", ok, "--describe", "--reconstruction-guidance", "2"])[0].task.fit.guidance == 2
    assert sample.parse_args(["a tune", "--inpaint", ok, "--region", "0.5:1"])[0].task.fit.guidance == sample.DEFAULT_GUIDANCE
    assert sample.parse_args(["a tune", "--seconds", "30"])[0].fit.guidance == 0
    assert sample.parse_args(["a tune", "--continue", ok, "--reconstruction-guidance", "0"])[0].task.fit.guidance == 0
    assert sample.parse_args(["a tune", "--seconds", "30", "--reconstruction-guidance", "1.5"])[0].fit.guidance == 1.5


def test_continuation_with_reconstruction_guidance_from_the_command_line(files, ckpt, tmp_path):
    """The guidance's gradients run under sample.py's grad mode (not inference_mode), and the output
    starts with the given clip to 16-bit precision (the file is PCM_16), though the untrained stages'
    new part peaks above full scale: the file is clipped there, not scaled."""
    out = str(tmp_path / "c.wav")
    fast = [a for s in cascade.STAGES for a in (f"--{s}-steps", "2")]
    sample.main(["a slow tune", "--continue", str(files / "ok.flac"), "--seconds", "2.5", "--reconstruction-guidance",
                 "2", "--ckpt-dir", ckpt, "--out", out, "--device", "cpu", "--seed", "1", *fast])
    wave, rate = sf.read(out)
    given, _ = sample.read_audio_input("--continue", str(files / "ok.flac"), None)
    assert rate == 24000 and len(wave) == 60000 and np.isfinite(wave).all()
    assert np.abs(wave[:len(given)] - given.numpy()).max() < 1 / 32768
    assert np.abs(wave[len(given):]).max() > 0.99         # the new part reached full scale


def test_describe_adds_what_the_shipped_mulan_hears_in_the_given_clip(tmp_path):
    """--describe: a real flute clip with drums gets "flute" and "drums" added to a prompt that names neither,
    and the prompt's own tempo word stands (no second tempo label)."""
    tune = toy_corpus.load_tunes()[3]
    rng = np.random.default_rng(4)
    attrs = toy_corpus.draw_attributes(rng, tune, 4.0, tempo="fast", instrument="flute", drums=True)
    audio, _ = toy_corpus.render_clip(tune, attrs, rng)
    sf.write(tmp_path / "flute.wav", audio, toy_corpus.SAMPLE_RATE)
    clip = str(tmp_path / "flute.wav")

    def prompts(argv):                  # what sample.main generates from
        args, p = sample.parse_args(argv)
        return sample.describe_prompts(args, p) if args.describe else args.prompt_list

    assert prompts(["a slow tune", "--continue", clip, "--describe"]) == ["a slow tune, flute, drums"]
    assert prompts(["a slow tune", "--inpaint", clip, "--region", "1:2"]) == \
        ["a slow tune, flute, drums"]                                  # the default for continuation and inpainting
    assert prompts(["a slow tune", "--continue", clip, "--no-describe"]) == ["a slow tune"]
    assert prompts(["a slow tune", "--init", clip]) == ["a slow tune"]    # it would undo the prompt


def test_refusals_come_before_any_work(files, tmp_path, capsys):
    """A bad audio-in request leaves no output folder behind, and a check that needs the generator's window
    refuses before MuLan describes the clip (no labels printed, one line)."""
    with pytest.raises(SystemExit):
        sample.parse_args(["a tune", "--continue", str(files / "missing.wav"), "--out", str(tmp_path / "new" / "x.wav")])
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main(["a tune", "--continue", str(files / "ok.flac"), "--overlap", "5", "--out", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "shorter than the generator's window" in err


def test_missing_file_from_the_command_line(files):
    r = subprocess.run([sys.executable, "sample.py", "a tune", "--continue", str(files / "missing.wav"),
                        "--ckpt-dir", "/nonexistent"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "missing" in lines[0] and "Traceback" not in r.stderr
