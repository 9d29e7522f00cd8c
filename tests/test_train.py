"""train.py: exact resume, the text route, checkpoints readable with weights_only, NaN guard, DDP."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import cascade
import train
from tests.helpers import free_port, process_error, write_tiny_t5, write_tone_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_tone_manifest(str(folder)), write_tiny_t5(str(folder / "t5"))


def _cfg(corpus, out, stage="super-res", **kw):
    manifest, t5 = corpus
    base = dict(stage=stage, scale="toy", data=manifest, out=str(out), steps=4, batch_size=2, workers=0,
                t5=t5, eval_every=0, log_every=1, ckpt_every=100, device="cpu")
    base.update(kw)
    return train.TrainConfig(**base)


def _weights(path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt, {**{"m." + k: v for k, v in ckpt["model"].items()}, **{"e." + k: v for k, v in ckpt["ema"].items()}}


@pytest.mark.parametrize("stage", ["super-res", "wave-generator"])
def test_resume_is_bitwise_exact(corpus, tmp_path, stage):
    steps = 4 if stage == "super-res" else 2
    train.train_stage(_cfg(corpus, tmp_path / "straight", stage, steps=steps), stage)
    train.train_stage(_cfg(corpus, tmp_path / "split", stage, steps=steps, stop_at=steps // 2), stage)
    half, _ = _weights(tmp_path / "split" / f"{stage}.pt")
    assert half["step"] == steps // 2
    train.train_stage(_cfg(corpus, tmp_path / "split", stage, steps=steps, resume=True), stage)
    a, wa = _weights(tmp_path / "straight" / f"{stage}.pt")
    b, wb = _weights(tmp_path / "split" / f"{stage}.pt")
    assert a["step"] == b["step"] == steps
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for key in ("model", "ema", "optimizer", "step", "config"):
        assert key in a


def test_resume_takes_architecture_from_checkpoint(corpus, tmp_path, monkeypatch):
    train.train_stage(_cfg(corpus, tmp_path / "run", stop_at=1), "super-res")
    before = torch.load(tmp_path / "run" / "super-res.pt", weights_only=True)
    toy = cascade.unet_config("super-res", "toy")
    assert before["config"]["base_dim"] == toy.base_dim
    # Change the preset table: a fresh run now builds another U-Net, a resumed one must not.
    unet = dict(cascade.PRESETS["super-res"]["unet"], toy=dataclasses.replace(toy, base_dim=8, blocks=(1, 1, 1)))
    monkeypatch.setitem(cascade.PRESETS["super-res"], "unet", cascade.ByScale(**unet))
    train.train_stage(_cfg(corpus, tmp_path / "fresh", stop_at=1), "super-res")
    fresh = torch.load(tmp_path / "fresh" / "super-res.pt", weights_only=True)
    assert fresh["config"]["base_dim"] == 8 and fresh["config"]["blocks"] == [1, 1, 1]
    result = train.train_stage(_cfg(corpus, tmp_path / "run", resume=True, steps=2), "super-res")
    after = torch.load(tmp_path / "run" / "super-res.pt", weights_only=True)
    assert result["steps"] == 2 and after["config"] == before["config"]
    assert {k: v.shape for k, v in after["model"].items()} == {k: v.shape for k, v in before["model"].items()}


def test_nan_guard_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    train.train_stage(_cfg(corpus, tmp_path, steps=2, ckpt_every=1), "super-res")
    real = train.loss_on_batch
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(train, "loss_on_batch", poisoned)
    with pytest.raises(SystemExit, match="at step 3"):
        train.train_stage(_cfg(corpus, tmp_path, steps=6, ckpt_every=1, resume=True), "super-res")
    ckpt = torch.load(tmp_path / "super-res.pt", weights_only=True)
    assert ckpt["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_kill_9_never_leaves_an_unreadable_checkpoint(corpus, tmp_path):
    manifest, t5 = corpus
    cmd = [sys.executable, "train.py", "--stage", "super-res", "--data", manifest, "--out", str(tmp_path),
           "--steps", "100000", "--batch-size", "2", "--workers", "0", "--ckpt-every", "1", "--eval-every", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "super-res.pt"
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    for delay in (0.05, 0.13, 0.29):          # kill at arbitrary moments of a save-every-step run
        time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] >= 1


def test_cli_errors_exit_2(tmp_path):
    for args in (["--stage", "nope"], ["--scale", "huge"], ["--data", str(tmp_path / "missing.jsonl")],
                 ["--steps", "-1"]):
        r = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)


# Run under torchrun: train.py's own training, then every rank reports a digest of its model's weights.
_DDP_DRIVER = """
import hashlib, json, sys
import torch.distributed as dist
sys.path.insert(0, {root!r})
import train
seen = {{}}
update = train.ema_update
def spy(ema, model, decay, step):
    seen["model"] = model
    return update(ema, model, decay, step)
train.ema_update = spy
destroy = dist.destroy_process_group                      # train.dist is this same module:
train.dist.destroy_process_group = lambda: None          # keep the group to compare the ranks
cfg = train.parse_args(sys.argv[1:])
train.train_stage(cfg, cfg.stage)
digest = hashlib.md5()
for v in seen["model"].state_dict().values():
    digest.update(v.numpy().tobytes())
digests = [None] * dist.get_world_size()
dist.all_gather_object(digests, digest.hexdigest())
if dist.get_rank() == 0:
    json.dump(digests, open({out!r}, "w"))
dist.barrier()                                           # both ranks past the json before either tears down
destroy()                                                # the real one (gloo's threads end before exit)
"""


def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    """Two ranks draw different batches but, with gradients averaged, end with the same weights: those
    rank 0 saves. A rank training alone (no gradient exchange) would end elsewhere."""
    manifest, t5 = corpus
    driver = tmp_path / "driver.py"
    driver.write_text(_DDP_DRIVER.format(root=ROOT, out=str(tmp_path / "digests.json")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(driver),
           "--stage", "super-res", "--data", manifest, "--out", str(tmp_path / "ddp"), "--steps", "2",
           "--batch-size", "2", "--workers", "0", "--eval-every", "0", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, process_error(r)
    digests = json.loads((tmp_path / "digests.json").read_text())
    ckpt = torch.load(tmp_path / "ddp" / "super-res.pt", weights_only=True)
    saved = hashlib.md5(b"".join(v.numpy().tobytes() for v in ckpt["model"].values())).hexdigest()
    assert ckpt["step"] == 2 and len(digests) == 2 and digests[0] == digests[1] == saved
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.suffix == ".pt") == ["super-res.pt"]
    alone = train.train_stage(_cfg(corpus, tmp_path / "alone", steps=2, batch_size=2), "super-res")
    single = torch.load(tmp_path / "alone" / "super-res.pt", weights_only=True)
    assert alone["steps"] == 2 and not all(torch.equal(single["model"][k], ckpt["model"][k]) for k in ckpt["model"])


def test_stage_all_trains_both_chains_and_exports(corpus, tmp_path, monkeypatch):
    """`--stage all`: the two chains side by side as subprocesses, then the inference export."""
    monkeypatch.setattr(train, "TOY_EXPORT", str(tmp_path / "export"))
    cfg = _cfg(corpus, tmp_path / "run", "all", steps=2, eval_every=0)
    results = train.train_all(cfg)
    assert sorted(r["stage"] for r in results) == sorted(cascade.STAGES)
    for stage in cascade.STAGES:
        ckpt = torch.load(tmp_path / "export" / f"{stage}.pt", weights_only=True)
        assert ckpt["step"] == 2 and ckpt["model"] is None and ckpt["optimizer"] is None
        assert all(v.dtype == torch.float16 for v in ckpt["ema"].values() if v.is_floating_point())


def test_loss_weighting_flag_replaces_the_presets(corpus, tmp_path, monkeypatch):
    """--loss-weighting sets eq. 1's w_t for the run, and a resumed run keeps it; unset, the stage's
    preset (Table 2's column) holds."""
    seen = []
    real = train.diffusion.diffusion_loss
    monkeypatch.setattr(train.diffusion, "diffusion_loss", lambda *a: seen.append(a[-1]) or real(*a))
    train.train_stage(_cfg(corpus, tmp_path / "preset", steps=1), "super-res")
    train.train_stage(_cfg(corpus, tmp_path / "sigma2", steps=1, loss_weighting="sigma2"), "super-res")
    assert seen == [cascade.stage_spec("super-res").loss_weighting, "sigma2"] and seen[0] == "unit"
    train.train_stage(_cfg(corpus, tmp_path / "sigma2", steps=2, resume=True), "super-res")
    assert seen[2:] == ["sigma2"]


def test_stage_all_gives_t5_only_to_the_stages_that_read_text(tmp_path, monkeypatch):
    """`--stage all --t5 DIR`: no text-encoder training, and --t5 passed on only where a stage reads text
    (train.py refuses it for the others)."""
    calls = []

    def fake_run(args, **kw):
        calls.append(args)
        return subprocess.CompletedProcess(args, 1, stdout="")      # each chain stops at its first stage

    monkeypatch.setattr(train.subprocess, "run", fake_run)
    cfg = train.TrainConfig(stage="all", out=str(tmp_path), t5=str(tmp_path / "t5"))
    ready = train.TextReady()
    ready.finish(ok=True)
    for chain in train.CHAINS:
        train.run_chain(cfg, [s for s in chain if s != "text"], [], ready)
    staged = {a[a.index("--stage") + 1]: a for a in calls}
    assert set(staged) == {chain[1] if chain[0] == "text" else chain[0] for chain in train.CHAINS}
    for stage, args in staged.items():
        assert ("--t5" in args) == cascade.stage_spec(stage).has_text, (stage, args)
