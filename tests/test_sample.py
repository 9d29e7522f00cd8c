"""sample.py end to end on checkpoints trained for one step: outputs, determinism, batching, errors."""
import math
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
from tests.helpers import train_tiny_cascade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [f"--{s}-steps=2" for s in cascade.STAGES]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return train_tiny_cascade(tmp_path_factory.mktemp("cascade"))


def _run(*args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_sample_writes_24khz_wav_and_is_deterministic(ckpts, tmp_path, pipeline):
    outs = []
    for name in ("a.wav", "b.wav"):
        r = _run("lo-fi guitar ballad", "--ckpt-dir", ckpts, "--pipeline", pipeline, "--seconds", "0.5",
                 "--out", str(tmp_path / name), "--seed", "7", *FAST)
        assert r.returncode == 0, r.stderr[-2000:]
        wave, rate = sf.read(tmp_path / name)
        assert rate == 24000 and len(wave) == 12000 and np.isfinite(wave).all()
        outs.append(wave)
    assert np.array_equal(outs[0], outs[1])


def test_prompts_file_batches_and_names_outputs(ckpts, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("slow piano\nfast drums\n\n")
    r = _run("--prompts", str(prompts), "--out-dir", str(tmp_path / "o"), "--ckpt-dir", ckpts, "--seconds", "0.25",
             "--save-stages", "--pipeline", "wave", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {"000.wav", "001.wav", "002.wav"} <= set(os.listdir(tmp_path / "o"))
    assert "unconditionally" in r.stderr
    assert (tmp_path / "o" / "000_wave-generator.wav").exists() and (tmp_path / "o" / "000_cascader.png").exists()


def test_the_shortest_length_runs_through_the_spectrogram_path(ckpts, tmp_path):
    """sample.MIN_SECONDS is long enough for every stage (the vocoder's mel projection pads by half its window)."""
    r = _run("slow flute", "--ckpt-dir", ckpts, "--pipeline", "spec", "--seconds", str(sample.MIN_SECONDS),
             "--out", str(tmp_path / "s.wav"), *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(sf.read(tmp_path / "s.wav")[0]) == round(24000 * sample.MIN_SECONDS)


@pytest.mark.parametrize("args", [["x", "--seconds", "0"], ["x", "--seconds", "0.03"], ["x", "--seconds", "-1"], ["x", "--seconds", "1e9"],
                                  ["x", "--ckpt-dir", "/nonexistent"], [], ["x", "--cascader-gamma", "2"],
                                  ["x", "--vocoder-aug", "1.5"], ["x", "--wave-generator-aug", "0.1"],
                                  ["x", "--cascader-schedule", "back-heavy-eval"], ["x", "--vocoder-schedule", "slow"],
                                  ["--prompts", "/nonexistent", "--out-dir", "o"]])
def test_bad_input_exits_2_with_one_line(args):
    r = _run(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("sample.py: error: "), r.stderr


def test_a_schedule_file_that_is_not_numbers_exits_2(tmp_path):
    bad = tmp_path / "deltas.txt"
    bad.write_text("0.5 abc\n")
    r = _run("x", "--cascader-schedule", str(bad))
    assert r.returncode == 2 and "step sizes must be numbers" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_table7_evaluation_schedule_is_accepted():
    """sample.py takes diffusion's fourth schedule name, Table 7's evaluation list of the spec-generator."""
    args, _ = sample.parse_args(["x", "--spec-generator-schedule", "back-heavy-eval", "--spec-generator-steps", "50"])
    deltas, *_ = cascade.resolve_sampling(cascade.stage_spec("spec-generator"), args.knobs["spec-generator"])
    assert len(deltas) == 50 and abs(sum(deltas) - 1) < 1e-9
    assert deltas[0] > deltas[-1]          # back-heavy: small steps near t = 1, the end of the list


def test_conditioning_noise_knob_changes_the_output(ckpts, tmp_path):
    """--cascader-aug t corrupts the 3.2 kHz input at noise time t and tells the cascader so."""
    outs = []
    for aug in ("0", "0.3"):
        r = _run("a slow piano tune", "--ckpt-dir", ckpts, "--seconds", "0.5", "--out", str(tmp_path / f"{aug}.wav"),
                 "--cascader-aug", aug, "--pipeline", "wave", *FAST)
        assert r.returncode == 0, r.stderr
        outs.append(sf.read(tmp_path / f"{aug}.wav")[0])
    assert not np.allclose(outs[0], outs[1])


def test_a_checkpoint_samples_with_the_schedule_it_was_trained_with(ckpts, tmp_path):
    """A checkpoint trained before the toy schedules were shifted keeps its own (unshifted) one."""
    path = os.path.join(ckpts, "cascader.pt")
    assert cascade.StageModel(path).spec.schedule == cascade.stage_spec("cascader").schedule == "linear+3.219"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["schedule"] = "linear"
    torch.save(ckpt, tmp_path / "old.pt")
    stage = cascade.StageModel(str(tmp_path / "old.pt"))
    assert stage.spec.schedule == "linear" and stage.model.config.schedule == "linear"


def test_spectrogram_generator_samples_without_dynamic_clipping():
    """Its default percentile is 0 (none: cascade.py says why); the other stages keep 0.995."""
    for scale in ("toy", "full"):
        assert cascade.resolve_sampling(cascade.stage_spec("spec-generator", scale), cascade.Sampling())[3] is None
        for stage in ("wave-generator", "cascader", "vocoder", "super-res"):
            percentile = cascade.resolve_sampling(cascade.stage_spec(stage, scale), cascade.Sampling())[3]
            assert percentile == diffusion.DEFAULT_CLIP_PERCENTILE
    assert cascade.resolve_sampling(cascade.stage_spec("spec-generator"), cascade.Sampling(clip=0.9))[3] == 0.9


def test_an_unclipped_generator_is_not_clipped(ckpts, monkeypatch):
    """run_stage applies the stage's default percentile: with clip 0 the estimate goes unclipped."""
    stage = cascade.StageModel(os.path.join(ckpts, "spec-generator.pt"))
    calls, original = [], diffusion.dynamic_clip
    monkeypatch.setattr(diffusion, "dynamic_clip", lambda x0, p: (calls.append(p), original(x0, p))[1])
    text = torch.zeros(1, 4, stage.model.config.text_dim)
    mask = torch.ones(1, 4, dtype=torch.bool)
    for knobs in (cascade.Sampling(steps=2), cascade.Sampling(steps=2, clip=0.995)):
        cascade.run_stage(stage, knobs, (1, 80, 8), torch.Generator().manual_seed(0), text, mask)
    assert calls == [0.995, 0.995]        # only the second run (clip given) clipped, at both of its steps


def test_keep_input_band_takes_the_low_band_from_the_input():
    """Below the input's Nyquist frequency the output is the input's spectrum, above it the stage's own."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 1, 2400, generator=gen)
    cond = data.fft_resample(torch.randn(2, 1, 1600, generator=gen), 16000, 24000)
    kept = cascade.keep_input_band(out, cond, 24000, 16000)
    low = torch.fft.rfftfreq(2400, 1 / 24000) < 8000
    K, O, C = (torch.fft.rfft(x.double()) for x in (kept, out, cond))
    assert torch.allclose(K[..., low], C[..., low], atol=1e-6) and torch.allclose(K[..., ~low], O[..., ~low], atol=1e-6)
    assert not torch.allclose(K[..., low], O[..., low], atol=1e-2)


def test_super_res_keeps_its_input_band_by_default(ckpts):
    """The super-res stage's default (cascade.py says why); --super-res-keep-band 0 turns it off; the
    cascader's default is off."""
    assert cascade.stage_spec("super-res").keep_band and cascade.stage_spec("super-res", "full").keep_band
    assert not cascade.stage_spec("cascader").keep_band
    stage = cascade.StageModel(os.path.join(ckpts, "super-res.pt"))
    cond = data.fft_resample(torch.randn(1, 1, 1600, generator=torch.Generator().manual_seed(1)), 16000, 24000)
    low = torch.fft.rfftfreq(2400, 1 / 24000) < 8000
    errors = []
    for knobs in (cascade.Sampling(steps=2), cascade.Sampling(steps=2, keep_band=0)):
        x = cascade.run_stage(stage, knobs, (1, 1, 2400), torch.Generator().manual_seed(0), cond=cond)
        errors.append((torch.fft.rfft(x.double()) - torch.fft.rfft(cond.double()))[..., low].abs().max().item())
    assert errors[0] < 1e-4 < errors[1]


def test_keep_band_flag(capsys):
    """--STAGE-keep-band exists for the two cascaders only and takes 0 or 1."""
    args, _ = sample.parse_args(["x", "--super-res-keep-band", "0", "--cascader-keep-band", "1"])
    assert args.knobs["super-res"].keep_band == 0 and args.knobs["cascader"].keep_band == 1
    assert args.knobs["vocoder"].keep_band is None
    for bad, message in ((["--super-res-keep-band", "2"], "must be 0 or 1"),
                         (["--vocoder-keep-band", "1"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as e:
            sample.parse_args(["x", *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_toy_spectrogram_generator_guides_less_than_table3(ckpts, monkeypatch):
    """Sampled at its defaults, the toy spectrogram generator guides with a smaller w than Table 3's
    (the full preset's); the wave generator and cascader guide at Table 3's w at both scales."""
    used = []
    real = diffusion.guided_eps_fn
    monkeypatch.setattr(diffusion, "guided_eps_fn", lambda eps, w, *a, **kw: used.append(w) or real(eps, w, *a, **kw))
    for stage in ("spec-generator", "wave-generator", "cascader"):
        model = cascade.StageModel(os.path.join(ckpts, f"{stage}.pt"))
        inputs = {"cond": torch.zeros(1, 1, 1600)} if stage == "cascader" else {}
        text_emb, mask = cascade.encode_prompts(text.load_t5(model.t5), ["a slow piano tune"], model.spec, "cpu")
        shape = (1, 80, 10) if stage == "spec-generator" else (1, 1, 1600 if stage == "cascader" else 320)
        cascade.run_stage(model, cascade.Sampling(steps=1), shape, torch.Generator().manual_seed(0), text_emb, mask,
                          **inputs)
    table3 = [cascade.stage_spec(s, "full").w for s in ("spec-generator", "wave-generator", "cascader")]
    assert used[0] < table3[0] and used[1:] == table3[1:], (used, table3)


def test_project_flag(capsys):
    """--vocoder-project exists for the vocoder only and takes a time in [0, 1]; --vocoder-mel-fit a
    whole number of rounds from 0."""
    args, _ = sample.parse_args(["x", "--vocoder-project", "0.5", "--vocoder-mel-fit", "0"])
    assert args.knobs["vocoder"].project == 0.5 and args.knobs["super-res"].project is None
    assert args.knobs["vocoder"].mel_fit == 0 and cascade.stage_spec("vocoder").mel_fit > 0
    for bad, message in ((["--vocoder-project", "1.5"], "--vocoder-project must be in [0, 1]"),
                         (["--cascader-project", "0.5"], "unrecognized arguments"),
                         (["--vocoder-mel-fit", "-1"], "--vocoder-mel-fit must be in [0, 1000]"),
                         (["--vocoder-mel-fit", "2.5"], "invalid int value"),
                         (["--super-res-mel-fit", "3"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as e:
            sample.parse_args(["x", *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_vocoder_mel_projection(ckpts):
    """Projected at every step, even the one-step-trained vocoder's output has its log-mel's
    magnitude (mel error a fraction of the unprojected one's); the toy default projects, full does not."""
    assert cascade.stage_spec("vocoder", "full").project == 1.0 and cascade.stage_spec("vocoder").project < 1
    assert all(cascade.stage_spec(s, scale).project == 1.0 for s in cascade.STAGES if s != "vocoder"
               for scale in ("toy", "full"))
    stage = cascade.StageModel(os.path.join(ckpts, "vocoder.pt"))
    t = torch.arange(8000) / 16000
    mel = data.log_mel(0.1 * torch.sin(2 * 3.14159 * 523.25 * t) * (t < 0.3))[None]   # (1, 80, 50)
    errors = []
    for project in (0.0, 1.0):
        x = cascade.run_stage(stage, cascade.Sampling(steps=3, project=project), (1, 1, 8000),
                              torch.Generator().manual_seed(0), aligned=mel)
        errors.append(float((data.log_mel(x[0, 0]) - mel[0]).abs().mean()))
    assert errors[0] < 0.3 * errors[1], errors


def test_mel_projection_limits_the_peak():
    """Projected onto a log-mel louder than full scale, a clip is scaled down to the peak limit;
    a quiet one is left as project_to_mel makes it."""
    t = torch.arange(8000) / 16000
    tone = torch.sin(2 * math.pi * 440 * t)[None, None]
    x0 = torch.cat([0.1 * tone, 0.1 * tone])
    mel = data.log_mel(torch.cat([3.0 * tone, 0.2 * tone])[:, 0])
    out = cascade.mel_projection(mel)(x0)
    assert float(out[0].abs().max()) == pytest.approx(cascade.MEL_PROJECTION_PEAK, rel=1e-5)
    plain = data.project_to_mel(x0, mel)
    assert float(plain[0].abs().max()) > 2 and torch.allclose(out[1], plain[1])


@pytest.mark.parametrize("T,width", [(1000, 30), (97, 40), (5, 2), (64000, 800)])
def test_running_min_is_the_pooled_minimum(T, width):
    """limit_peaks' O(T) running minimum equals torch's min-pool over the same window, ends padded."""
    x = torch.rand((3, 1, T), generator=torch.Generator().manual_seed(T))
    pooled = -torch.nn.functional.max_pool1d(-x, 2 * width + 1, stride=1, padding=min(width, (2 * width + 1) // 2))
    if pooled.shape[-1] == T:
        assert torch.equal(cascade._running_min(x, width), pooled)
    brute = torch.stack([x[..., max(t - width, 0):t + width + 1].amin(-1) for t in range(min(T, 200))], -1)
    assert torch.equal(cascade._running_min(x, width)[..., :brute.shape[-1]], brute)


def test_a_log_mel_past_its_range_is_held_at_the_top(ckpts, monkeypatch):
    """The spectrogram generator's output is a log-mel: values above 1 (DB_MAX) are clamped to it, the
    rest (silence below -1 included) left as sampled."""
    stage = cascade.StageModel(os.path.join(ckpts, "spec-generator.pt"))
    monkeypatch.setattr(diffusion, "run_sampler", lambda sampler, eps, x_T, *a, **k: 3 * x_T)
    x = cascade.run_stage(stage, cascade.Sampling(steps=2), (1, 80, 20), torch.Generator().manual_seed(0))
    x_T = 3 * torch.randn((1, 80, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_T.clamp(max=1.0)) and float(x_T.max()) > 1 and float(x.min()) < -1


def test_the_peak_limit_acts_only_near_the_loud_moment():
    """One loud spike in 2 s of a quiet tone: the output stays under the peak, the tone further than
    twice the limiter's width from the spike is untouched, and a clip under the peak is left alone."""
    t = torch.arange(32000) / 16000
    y = (0.3 * torch.sin(2 * math.pi * 440 * t))[None, None].repeat(2, 1, 1)
    y[0, 0, 16000] = 50.0
    width = 800
    out = cascade.limit_peaks(y, 0.9, width)
    assert float(out.abs().max()) <= 0.9
    far = torch.ones(32000, dtype=torch.bool)
    far[16000 - 2 * width:16000 + 2 * width + 1] = False
    assert torch.equal(out[0, 0, far], y[0, 0, far]) and torch.equal(out[1], y[1])
    assert float(out[0, 0, 16000]) == pytest.approx(0.9, rel=1e-4)


def test_the_sampler_knob_picks_the_sampler_and_its_steps(ckpts, monkeypatch):
    """--STAGE-sampler reaches run_stage with the step count of that sampler (ode_steps for the ODE
    samplers where the preset sets it); audio in (a Given) samples with eq. 4 whatever the knob."""
    args, _ = sample.parse_args(["x", "--cascader-sampler", "dpmpp-2m", "--super-res-sampler", "ddim"])
    assert args.knobs["cascader"].sampler == "dpmpp-2m" and args.knobs["wave-generator"].sampler is None
    for scale in ("toy", "full"):
        assert cascade.stage_spec("wave-generator", scale).sampler in diffusion.SAMPLERS
        for stage in cascade.STAGES:      # the paper's eq. 4 at full scale, its steps when named at toy
            spec = cascade.stage_spec(stage, scale)
            assert scale == "toy" or spec.sampler == "ancestral"
            eq4 = cascade.resolve_sampling(spec, cascade.Sampling(sampler="ancestral"))[0]
            assert len(eq4) == spec.steps
    stage = cascade.StageModel(os.path.join(ckpts, "super-res.pt"))
    seen = []
    monkeypatch.setattr(diffusion, "run_sampler", lambda name, eps, x_T, deltas, *a: (seen.append((name, len(deltas))), x_T)[1])
    monkeypatch.setattr(diffusion, "known_region_sample", lambda eps, x_T, deltas, *a: (seen.append(("given", len(deltas))), x_T)[1])
    cond = torch.zeros(1, 1, 240)
    for name in diffusion.SAMPLERS:
        cascade.run_stage(stage, cascade.Sampling(sampler=name, steps=3), (1, 1, 240), torch.Generator(), cond=cond)
    given = cascade.Given(known=torch.zeros(1, 1, 240), mask=torch.ones(1, 1, 240, dtype=torch.bool))
    cascade.run_stage(stage, cascade.Sampling(sampler="dpmpp-2m"), (1, 1, 240), torch.Generator(), cond=cond, given=given)
    assert seen == [(n, 3) for n in diffusion.SAMPLERS] + [("given", stage.spec.steps)]


def test_knobs_of_stages_the_pipeline_skips_are_named(ckpts, tmp_path):
    """--cascader-steps on the spectrogram path, or --super-res-w with --stereo, does nothing: a note says so."""
    def idle(*argv):
        return [flag for flag, _ in idle_why(*argv)]

    def idle_why(*argv):
        return sample.idle_knobs(sample.parse_args(["x", "--out", str(tmp_path / "o.wav"), *argv])[0])
    assert idle("--cascader-steps", "3", "--vocoder-w", "2") == ["--cascader-steps"]
    assert idle("--pipeline", "wave", "--stereo", "--super-res-w", "2", "--stereo-w", "2") == ["--super-res-w"]
    assert idle("--pipeline", "wave", "--cascader-steps", "3") == []
    for rate, used, unused in ((3200, "--cascader-steps", "--wave-generator-steps"), (16000, "--super-res-steps", "--cascader-steps")):
        path = str(tmp_path / f"in{rate}.wav")
        sf.write(path, 0.1 * np.sin(np.arange(rate) * 0.05), rate)
        (flag, why), = idle_why("--upsample", path, used, "2", unused, "2")
        assert flag == unused and why.startswith("--upsample of "), why
    r = _run("x", "--ckpt-dir", ckpts, "--seconds", "0.25", "--out", str(tmp_path / "a.wav"), *FAST)
    assert r.returncode == 0 and "note: --cascader-steps is ignored: --pipeline spec" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_the_readme_examples_are_what_the_shipped_checkpoints_make(tmp_path, pipeline):
    """docs/examples/PIPELINE.wav is `python sample.py "a slow solo flute melody in a major key" --pipeline
    PIPELINE` from checkpoints/toy (to a few 16-bit steps: thread counts order float sums differently)."""
    out = str(tmp_path / f"{pipeline}.wav")
    sample.main(["a slow solo flute melody in a major key", "--pipeline", pipeline, "--out", out, "--device", "cpu"])
    made, shipped = sf.read(out)[0], sf.read(os.path.join(ROOT, "docs", "examples", f"{pipeline}.wav"))[0]
    assert made.shape == shipped.shape and np.abs(made - shipped).max() < 0.01, np.abs(made - shipped).max()
