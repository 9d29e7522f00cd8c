"""Train one stage of the Noise2Music cascade (section 4.1), or all of them at toy scale.

    python train.py --stage wave-generator --scale toy          # one stage, toy corpus
    python train.py --stage all                                  # the whole toy cascade
    python train.py --stage vocoder --scale full --data my/manifest.jsonl --t5 t5-v1_1-large
    torchrun --nproc_per_node=8 train.py --stage cascader --scale full --data ...

The recipe of section 4.1: Adam (0.9, 0.999); a cosine learning rate with linear warm-up (full:
peak 1e-4, 10k warm-up steps, cosine end point 2.5M steps); an EMA of the weights (full: 0.9999),
whose weights the sampler uses; the text hidden for 10% of each batch by zeroing the
cross-attention output; each stage's loss weight and noise schedule of Table 2; the crops and
conditioning augmentations of data.py; gradient accumulation up to the paper's batch sizes
(2048, 4096 for super-res) at full scale; bfloat16 autocast on GPU; gradient clipping at 1.

Determinism: every random draw of step s (clips, crops, texts, t, eps, augmentations, CFG
dropout) comes from generators seeded by (seed, rank, s, micro-step) alone, so a run resumed from
a checkpoint at step s continues exactly as the uninterrupted run (bitwise on CPU, tested, with
one process or several). Resumed with another number of processes, it continues from the same
weights, optimizer state and step, and rank r keeps drawing the stream it would have drawn; the
ranks that were added or removed change the global batch (at full scale, grad_accum is chosen
again to keep the paper's batch), so the result is then no longer bitwise the uninterrupted run's.
Differences from the paper at toy scale: far fewer steps, a larger learning rate (1e-3), an EMA
decay of 0.999 with the usual (1 + n) / (10 + n) warm-up, no gradient accumulation, and half of
the cascaders' and vocoder's examples see their conditioning un-augmented (`--clean-share`, see
data.augment_conditioning: in a short run, the paper's t ~ U[0, t_max] would leave too few
examples of the clean input that inference gives them).
"""
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from tqdm import tqdm

import cascade
import checks
import data
import diffusion
import plots
import store
import text
from unet1d import UNet1D, UNetConfig, count_parameters

FORMAT_VERSION = 1
TOY_DATA = "toy_data/corpus"                 # the toy corpus, built on first use
TOY_STEREO_DATA = "toy_data/stereo"          # its stereo rendering (data.py toy --stereo), for the stereo stage
TOY_T5 = "checkpoints/toy/t5"                # the toy text encoder (text.py / pseudolabel.py)
TOY_EXPORT = "checkpoints/toy"               # where `--stage all` writes the inference checkpoints
PRESET = "default: the stage's preset at --scale (cascade.py)"


@dataclass
class TrainConfig:
    """Every flag of train.py: the command line is generated from these fields.

    A field left at None takes the stage's value at cfg.scale from cascade.PRESETS (`resolve_config`).
    """
    stage: str = field(default="wave-generator", metadata={"help": f"one of {', '.join(cascade.STAGES)}, or all"})
    scale: str = field(default="toy", metadata={"help": "toy (CPU, minutes), small (one 24 GB GPU, a day per stage) "
                                                         "or full (the paper's Tables 2 and 8)"})
    data: str = field(default="", metadata={"help": "manifest.jsonl, or a folder from data.py prepare (read lazily, "
                                                   "bounded memory); default: the toy corpus, built on first use"})
    cache_dir: str = field(default="", metadata={"help": "where decoded audio is cached (default: .cache beside the manifest)"})
    out: str = field(default="runs/toy", metadata={"help": "run folder: checkpoints, logs, snapshots"})
    steps: int = field(default=None, metadata={"help": f"optimizer steps ({PRESET}; Table 2 at full)"})
    batch_size: int = field(default=None, metadata={"help": f"examples per micro-batch per process ({PRESET})"})
    grad_accum: int = field(default=None, metadata={"help": "micro-batches per step (default: enough to reach the preset's "
                                                            "accumulate_to, the paper's batch at full; 1 toy)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/STAGE.pt"})
    t5: str = field(default="", metadata={"help": "Hugging Face-format T5 directory (default: the toy encoder)"})
    lr: float = field(default=None, metadata={"help": f"peak learning rate ({PRESET})"})
    warmup: int = field(default=None, metadata={"help": f"warm-up steps ({PRESET})"})
    lr_end: int = field(default=None, metadata={"help": "the step where the cosine reaches 0 (default: the preset's; "
                                                        "at toy scale, the run's last step)"})
    ema_decay: float = field(default=None, metadata={"help": f"EMA decay ({PRESET})"})
    loss_weighting: str = field(default=None, metadata={"help": "w_t of eq. 1: unit or sigma2 (default: the preset's, "
                                                                "Table 2's loss column)"})
    text_dropout: float = field(default=0.1, metadata={"help": "share of examples trained without text (CFG)"})
    clean_share: float = field(default=None, metadata={"help": f"share of examples whose conditioning is not augmented ({PRESET})"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    workers: int = field(default=1, metadata={"help": "DataLoader worker processes"})
    ckpt_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    eval_every: int = field(default=1000, metadata={"help": "steps between audio snapshots and loss plots (0: off)"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    device: str = field(default="", metadata={"help": "cpu or cuda (default: cuda when available)"})
    dry_run: bool = field(default=False, metadata={"help": "build each stage, print its size and memory estimate, exit"})
    stop_at: int = field(default=0, metadata={"help": "stop (with a checkpoint) after this step, as if killed (tests)"})


def parse_args(argv=None):
    parser = data.OneLineParser(description="Train a stage of the Noise2Music cascade (section 4.1).")
    data.add_dataclass_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    if args.stage not in cascade.STAGES + ("all",):
        parser.error(f"--stage must be one of {', '.join(cascade.STAGES)}, all")
    if args.scale not in cascade.SCALES:
        parser.error(f"--scale must be one of {', '.join(cascade.SCALES)}")
    if args.stage == "all" and args.scale != "toy" and not args.dry_run:
        parser.error("--stage all trains the toy cascade; train full-scale stages one by one")
    for name in ("steps", "batch_size", "grad_accum"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.loss_weighting is not None and args.loss_weighting not in diffusion.WEIGHTINGS:
        parser.error(f"--loss-weighting must be one of {', '.join(diffusion.WEIGHTINGS)}")
    if args.loss_weighting is not None and args.stage == "all":
        parser.error("--loss-weighting sets one stage's loss; give that stage with --stage")
    if args.t5 and args.stage in cascade.STAGES and not cascade.stage_spec(args.stage).has_text:
        parser.error(f"--t5: the {args.stage} stage reads no text")
    if args.stop_at < 0:
        parser.error("--stop-at must not be negative")
    if args.data and not os.path.exists(args.data):
        parser.error(f"--data {args.data}: no such file")
    if args.data and os.path.isdir(args.data) and not store.is_prepared(args.data):
        parser.error(f"--data {args.data}: not a finished prepared folder (python data.py prepare)")
    if args.data and os.path.isdir(args.data) and args.stage in cascade.STAGES and \
            cascade.stage_spec(args.stage).channels != 1:
        parser.error(f"--data {args.data}: a prepared folder holds mono mix-downs; train the {args.stage} stage "
                     "from a manifest")
    if args.data and os.path.isdir(args.data) and args.stage == "all":
        parser.error("--stage all reads a manifest (its text encoder trains on it), not a prepared folder")
    try:
        check_config(args)
    except (checks.InputError, data.ManifestError) as e:
        parser.error(str(e))
    return TrainConfig(**vars(args))


def check_config(cfg):
    """Everything a run needs, checked before any model is built: numbers finite and in range, the
    device, and (unless --dry-run) a writable run folder and cache, a readable manifest."""
    for name, low in (("ckpt_every", 1), ("log_every", 1), ("eval_every", 0), ("workers", 0), ("warmup", 0),
                      ("lr_end", 0)):
        if getattr(cfg, name) is not None and getattr(cfg, name) < low:    # None: the preset's value
            raise checks.InputError(f"--{name.replace('_', '-')} must be at least {low}")
    checks.check_number("--lr", cfg.lr, 0, low_open=True)
    checks.check_number("--ema-decay", cfg.ema_decay, 0, 1, high_open=True)
    checks.check_number("--text-dropout", cfg.text_dropout, 0, 1)
    checks.check_number("--clean-share", cfg.clean_share, 0, 1)
    checks.check_number("--grad-clip", cfg.grad_clip, 0, low_open=True)
    checks.check_seed("--seed", cfg.seed)
    checks.resolve_device(cfg.device)
    if cfg.dry_run:
        return
    checks.check_writable_dir("--out", cfg.out)
    if cfg.data and os.path.isfile(cfg.data):
        data.read_manifest(cfg.data)
    if (cfg.data and os.path.isfile(cfg.data)) or cfg.cache_dir:     # a prepared folder needs no cache
        checks.check_writable_dir("--cache-dir", cache_folder(cfg, cfg.data))


def cache_folder(cfg, manifest):
    """Where decoded, resampled audio is cached: --cache-dir, else .cache beside the manifest."""
    return cfg.cache_dir or os.path.join(os.path.dirname(os.path.abspath(manifest)), ".cache")


def refuse(message):
    """A user's mistake found after parsing: one line on stderr, exit status 2."""
    print(f"train.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_config(cfg: TrainConfig, spec: cascade.StageSpec) -> TrainConfig:
    """cfg with every field left at None taken from the stage's preset (`spec`, cfg.scale's column)."""
    preset = {"steps": spec.train_steps, "batch_size": spec.batch, "lr": spec.lr, "warmup": spec.warmup,
              "ema_decay": spec.ema_decay, "clean_share": spec.clean_share}
    c = dataclasses.replace(cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) is None})
    if c.grad_accum is None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        c.grad_accum = max(1, spec.accumulate_to // (c.batch_size * world))
    if c.lr_end is None:
        c.lr_end = spec.lr_end if spec.lr_end is not None else c.steps
    return c


# ------------------------------------------------------------------------------------------------
# Data: every batch is a pure function of (seed, rank, step, micro-step)

class MemoryClips:
    """data.load_clips' list of (entry, wave) behind store.StoreClips' interface (len, wave, entry)."""

    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def wave(self, i):
        return self.clips[i][1]

    def entry(self, i):
        return self.clips[i][0]


TEXT_MEMO = 100_000      # clips whose text batches a StageBatches keeps (per DataLoader worker)


class StageBatches(torch.utils.data.Dataset):
    """Item (s, k) is the whole k-th micro-batch of step s: clips, crop, texts, drawn from (seed, rank, s, k).

    `clips` is a MemoryClips (a manifest decoded into memory) or a store.StoreClips (a prepared
    folder, read clip by clip in the DataLoader workers); both give the same clip i, so the same
    seed draws the same batches from either. Micro-step 0 is seeded by (seed, rank, s) alone.
    Nothing depends on the number of ranks or micro-steps, so a run resumed with a different
    number of either never redraws a batch it has already used.
    """

    def __init__(self, spec, clips, batch_size, seed, rank, count_tokens=None):
        self.spec, self.batch_size = spec, batch_size
        self.clips = clips if hasattr(clips, "wave") else MemoryClips(clips)
        self.seed, self.rank, self.count_tokens = seed, rank, count_tokens
        self._texts = {}            # clip -> its text batch, memoised (tokenizing is per clip, not per pick)

    def __len__(self):
        return 1 << 40

    def texts(self, i):
        """Clip i's text batch (data.text_entries); [] for a stage without text."""
        if not self.spec.has_text:
            return []
        if i not in self._texts:
            if len(self._texts) >= TEXT_MEMO:           # bounded: a large collection is not held in memory
                self._texts.clear()
            self._texts[i] = data.text_entries(self.clips.entry(i), self.spec.token_len, self.count_tokens)
        return self._texts[i]

    def __getitem__(self, index):
        step, k = index if isinstance(index, tuple) else (index, 0)
        rng = np.random.default_rng([self.seed, self.rank, step] + ([k] if k else []))
        crop = cascade.crop_length(self.spec, rng)
        picks = rng.integers(len(self.clips), size=self.batch_size)
        examples = [cascade.training_example(self.spec, self.clips.wave(i), crop, rng) for i in picks]
        batch = {k: torch.from_numpy(np.stack([e[k] for e in examples])).float() for k in examples[0]}
        batch["text"] = [data.draw_text(self.texts(i), rng) for i in picks]
        return batch


class MicroSteps(torch.utils.data.Sampler):
    """The DataLoader's indices: (s, k) for steps s in [first, last) and micro-steps k < grad_accum."""

    def __init__(self, first, last, grad_accum):
        self.first, self.last, self.grad_accum = first, last, grad_accum

    def __len__(self):
        return (self.last - self.first) * self.grad_accum

    def __iter__(self):
        return ((s, k) for s in range(self.first, self.last) for k in range(self.grad_accum))


def load_stage_clips(cfg, spec):
    """(clips, source): the stage's clips at its rate, from a prepared folder (read lazily) or a
    manifest (decoded into memory, cached on disk); the toy corpus by default."""
    if cfg.data and os.path.isdir(cfg.data):
        try:
            clips = store.StoreClips(cfg.data, spec.sample_rate, spec.clip_seconds)
        except store.StoreError as e:
            refuse(str(e))
        if not len(clips):
            refuse(f"no usable audio in {cfg.data} ({clips.meta['skipped']} files skipped)")
        return clips, cfg.data
    toy = TOY_STEREO_DATA if spec.channels == 2 else TOY_DATA
    manifest = cfg.data or os.path.join(toy, "manifest.jsonl")
    if not cfg.data and not os.path.exists(manifest):
        build_toy_corpus(stereo=spec.channels == 2)
    try:
        entries = data.read_manifest(manifest)
    except data.ManifestError as e:
        refuse(str(e))
    clips, skipped = data.load_clips(entries, spec.sample_rate, spec.clip_seconds, cache_dir=cache_folder(cfg, manifest),
                                     progress=is_main(), channels=spec.channels)
    if not clips:
        refuse(f"no usable audio in {manifest} ({len(skipped)} files skipped)")
    return MemoryClips(clips), manifest


def build_toy_corpus(stereo=False):
    """The toy corpus (or its stereo rendering: the same clips, captions and seed) on first use."""
    out = TOY_STEREO_DATA if stereo else TOY_DATA
    print(f"building the toy corpus in {out} (first use)")
    data.main(["toy", "--out", out] + (["--stereo", "--unlabeled", "0"] if stereo else []))


# ------------------------------------------------------------------------------------------------
# Model, optimizer, EMA, learning rate, checkpoints

def learning_rate(step, cfg):
    """Linear warm-up to the peak, then cosine decay to zero at cfg.lr_end (section 4.1)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.lr_end - cfg.warmup))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema, model, decay, step):
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)


def atomic_save(obj, path):
    """torch.save through checks.atomic_write (a temporary file beside `path`, flushed, renamed)."""
    checks.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def checkpoint_path(cfg, stage):
    return os.path.join(cfg.out, f"{stage}.pt")


def save_checkpoint(cfg, stage, step, model, ema, opt, unet_cfg, t5_path, losses):
    """One file per stage, always the latest (the rename is the pointer); a JSON note beside it."""
    ckpt = {"format_version": FORMAT_VERSION, "stage": stage, "scale": cfg.scale, "step": step,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "config": unet_cfg.to_dict(), "train_config": dataclasses.asdict(cfg), "t5": t5_path,
            "losses": losses[-10000:]}
    path = checkpoint_path(cfg, stage)
    atomic_save(ckpt, path)
    note = json.dumps({"latest": os.path.basename(path), "step": step})
    checks.atomic_write(path + ".json", lambda tmp: _write_text(tmp, note))


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:        # a user-facing one-liner: which file, what went wrong
        refuse(f"cannot read checkpoint {path}: {checks.load_problem(e)}")


def load_resume(cfg, stage):
    """OUT/STAGE.pt to continue from (None: start afresh); refused (exit 2) unless it is a training
    checkpoint of this stage at this scale whose weights and EMA are finite."""
    path = checkpoint_path(cfg, stage)
    if not cfg.resume:
        return None
    if not os.path.exists(path):
        if is_main():
            print(f"no checkpoint at {path}: starting from scratch")
        return None
    ckpt = load_checkpoint(path)
    try:
        checks.check_identity(ckpt, path, stage, cfg.scale)
        if ckpt.get("model") is None or ckpt.get("optimizer") is None:
            raise checks.InputError(f"{path} is an inference export (EMA only); resume from a run folder's checkpoint")
        checks.check_finite_state(ckpt["model"], f"{path} ({stage} weights)")
        checks.check_finite_state(ckpt["ema"], f"{path} ({stage} EMA)")
        if ckpt["step"] > cfg.steps:
            raise checks.InputError(f"{path} is at step {ckpt['step']}, past --steps {cfg.steps}; give more steps "
                                    "to train on")
    except checks.InputError as e:
        refuse(str(e))
    return ckpt


def remove_stale_temporaries(cfg, stage):
    """Partial STAGE.pt.tmpPID / STAGE.pt.json.tmpPID files of runs that were killed mid-write."""
    for path in (checkpoint_path(cfg, stage), checkpoint_path(cfg, stage) + ".json"):
        checks.remove_stale_temporaries(path)


# ------------------------------------------------------------------------------------------------
# Distributed set-up (torchrun)

def is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed(device):
    if "RANK" not in os.environ:
        return 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


# ------------------------------------------------------------------------------------------------
# One training step

def condition(batch, spec, text_cache, gen, text_dropout, device, clean_share=0.0):
    """Augment the conditioning input and encode the text: the model's keyword arguments."""
    kw = {}
    for route in ("cond", "aligned"):
        if route in batch:
            kw[route], kw["aug_t"] = data.augment_conditioning(batch[route], spec.augmentation, spec.schedule, gen,
                                                               clean_share)
    if spec.has_text:
        emb, mask = text_cache(batch["text"])                          # (B, L, D), (B, L)
        empty = torch.tensor([t == "" for t in batch["text"]])
        kw["text"], kw["text_mask"] = emb, mask
        kw["drop_text"] = (torch.rand(len(batch["text"]), generator=gen) < text_dropout) | empty
    return {k: v.to(device) for k, v in kw.items()}


def loss_on_batch(model, batch, spec, text_cache, cfg, gen, device):
    """Eq. 1: || eps_hat(alpha_t x0 + sigma_t eps, t) - eps ||^2, weighted by w_t."""
    x0 = batch["x0"]
    kw = condition(batch, spec, text_cache, gen, cfg.text_dropout, device, cfg.clean_share)
    t = torch.rand(x0.shape[0], generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    x0, t, eps = x0.to(device), t.to(device), eps.to(device)
    x_t = diffusion.q_sample(x0, t, eps, spec.schedule)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        eps_hat = model(x_t, t, **kw)
    return diffusion.diffusion_loss(eps_hat.float(), eps, t, spec.schedule, spec.loss_weighting)


# ------------------------------------------------------------------------------------------------
# Snapshots: a sample and a loss curve in the run folder at eval intervals

def snapshot(cfg, spec, ema, batch, text_cache, step, losses, device):
    """Write OUT/snapshots/STAGE_STEP.wav (a short EMA sample; .npy for a log-mel), its log-mel picture
    STAGE_STEP.png, and OUT/STAGE_loss.png."""
    folder = os.path.join(cfg.out, "snapshots")
    os.makedirs(folder, exist_ok=True)
    one = {k: v[:1] for k, v in batch.items()}
    gen = torch.Generator().manual_seed(0)
    kw = condition(one, spec, text_cache, gen, 0.0, device)
    kw.pop("drop_text", None)
    eps_fn = lambda x, t: ema(x, t, **kw).float()
    deltas = diffusion.step_schedule("uniform", 20)
    x = diffusion.sample(eps_fn, torch.randn(one["x0"].shape, generator=gen).to(device), deltas, spec.schedule, 0.0, gen)
    base = os.path.join(folder, f"{spec.name}_{step:07d}")
    title = f"{spec.name}, step {step}"
    if spec.output == "spec":
        mel = x[0].cpu().numpy()
        checks.atomic_write(base + ".npy", lambda tmp: _save_npy(tmp, mel))
        plots.save_spectrogram(base + ".png", mel, title)
    else:
        audio = cascade.final_audio(x)[0].clamp(-1, 1).numpy()         # (T,), or (2, T) left, right
        checks.atomic_write(base + ".wav", lambda tmp: sf.write(tmp, audio.T, spec.sample_rate, format="WAV"))
        plots.save_wave_spectrogram(base + ".png", x[0, 0].clamp(-1, 1).cpu().numpy(), spec.sample_rate, title)
    plots.save_losses(os.path.join(cfg.out, f"{spec.name}_loss.png"), losses)


def _save_npy(path, array):
    with open(path, "wb") as f:          # a file object: np.save would append ".npy" to a name
        np.save(f, array)


# ------------------------------------------------------------------------------------------------
# Dry run: sizes and memory at full scale without allocating anything

def dry_run(cfg):
    stages = cascade.STAGES if cfg.stage == "all" else (cfg.stage,)
    for stage in stages:
        spec = cascade.stage_spec(stage, cfg.scale)
        ucfg = cascade.unet_config(stage, cfg.scale)
        with torch.device("meta"):
            model = UNet1D(ucfg)
        n = count_parameters(model)
        length = round((spec.crop_seconds[1] if spec.crop_seconds else spec.clip_seconds) * spec.frame_rate)
        acts = activation_bytes(model, ucfg, length)
        states = n * (4 + 4 + 8 + 4)                 # weights, gradients, Adam moments, EMA (fp32)
        # At the preset's batch; the H100 peaks of bench/results_gpu_train_step_h100.txt (bfloat16
        # autocast) are 1.0-1.4 times this sum at full scale.
        total = states + spec.batch * acts
        print(f"{stage:15s} {n / 1e6:8.1f}M params  {states / 2**30:6.2f} GiB weights+grads+Adam+EMA  "
              f"{acts / 2**30:6.2f} GiB activations per example of length {length} (fp32)  "
              f"{total / 2**30:6.2f} GiB at batch {spec.batch}")


def activation_bytes(model, ucfg, length):
    """Sum of every module's output size in one forward pass (meta tensors): activations kept for backward."""
    total = [0]

    def hook(_, __, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.device("meta"):
        x = torch.zeros(1, ucfg.in_channels, length)
        kw = {"cond": torch.zeros(1, ucfg.cond_channels, length)} if ucfg.cond_channels else {}
        if ucfg.text_dim:
            kw.update(text=torch.zeros(1, 64, ucfg.text_dim), text_mask=torch.ones(1, 64, dtype=torch.bool))
        if ucfg.aligned_channels:
            kw["aligned"] = torch.zeros(1, ucfg.aligned_channels, length // ucfg.aligned_rate)
        model(x, torch.zeros(1), **kw)
    for h in handles:
        h.remove()
    return total[0]


# ------------------------------------------------------------------------------------------------
# The training script

def train_stage(cfg: TrainConfig, stage: str):
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = setup_distributed(device)
    spec = cascade.stage_spec(stage, cfg.scale)
    cfg = resolve_config(dataclasses.replace(cfg, stage=stage), spec)
    os.makedirs(cfg.out, exist_ok=True)
    if is_main():
        remove_stale_temporaries(cfg, stage)
    ckpt = load_resume(cfg, stage)
    # --loss-weighting, or on resume the run's own, else the preset's
    weighting = cfg.loss_weighting or ((ckpt or {}).get("train_config") or {}).get("loss_weighting")
    if weighting:
        spec = dataclasses.replace(spec, loss_weighting=weighting)
        cfg = dataclasses.replace(cfg, loss_weighting=weighting)

    # text encoder (frozen) and its embedding cache
    text_cache, t5_path, count_tokens = None, "", None
    if spec.has_text:
        t5_path = (ckpt or {}).get("t5") or cfg.t5 or TOY_T5
        tokenizer, encoder = load_text_encoder(t5_path)
        text_cache = text.EmbeddingCache(tokenizer, encoder.eval(), spec.token_len)
        count_tokens = lambda s: len(tokenizer.sp.encode(s)) + 1        # pieces + EOS

    # model: architecture from the checkpoint when resuming, else from the stage table
    text_dim = text_cache.encoder.config.d_model if text_cache is not None else None
    unet_cfg = UNetConfig.from_dict(ckpt["config"]) if ckpt else cascade.unet_config(stage, cfg.scale, text_dim)
    torch.manual_seed(cfg.seed)
    model = UNet1D(unet_cfg).to(device)
    ema = UNet1D(unet_cfg).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    step, losses, saved = 0, [], None           # saved: the step of the newest checkpoint on disk
    if ckpt:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, losses = ckpt["step"], [tuple(x) for x in ckpt.get("losses", [])]
        saved = step
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    clips, manifest = load_stage_clips(cfg, spec)
    batches = StageBatches(spec, clips, cfg.batch_size, cfg.seed, rank, count_tokens)
    sampler = MicroSteps(step, cfg.steps, cfg.grad_accum)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=sampler, num_workers=cfg.workers,
                                         persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    if is_main():
        print(f"{stage}: {count_parameters(model) / 1e6:.2f}M params, {len(clips)} clips from {manifest}, "
              f"{cfg.steps} steps of {cfg.batch_size} x {cfg.grad_accum} x {world} on {device}")

    bar = tqdm(total=cfg.steps, initial=step, desc=stage, disable=not is_main(), dynamic_ncols=True)
    log = open(os.path.join(cfg.out, f"{stage}.log.jsonl"), "a") if is_main() else None
    micro = iter(loader)
    t0, start_step = time.time(), step
    while step < cfg.steps:
        lr = learning_rate(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for k in range(cfg.grad_accum):
            batch = next(micro)
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, rank, step, k))
            sync = k == cfg.grad_accum - 1 or world == 1
            with (ddp.no_sync() if not sync else contextlib.nullcontext()):
                loss = loss_on_batch(ddp, batch, spec, text_cache, cfg, gen, device)
                (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        if not math.isfinite(total):                      # NaN guard: keep the last good checkpoint
            raise SystemExit(f"train.py: {stage} loss is {total} at step {step}; stopped, {last_good(cfg, stage, saved)}")
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, cfg.ema_decay, step)
        step += 1
        losses.append((step, total))
        checkpoint_now = step % cfg.ckpt_every == 0 or step == cfg.steps or step == cfg.stop_at
        if checkpoint_now:          # on every rank: the weights are the same on all, so all stop together
            check_finite_weights(model, ema, cfg, stage, step, saved)
        if is_main():
            rate = (step - start_step) / (time.time() - t0)
            bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", it_s=f"{rate:.2f}")
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                recent = [v for _, v in losses[-cfg.log_every:]]
                log.write(json.dumps({"step": step, "loss": sum(recent) / len(recent), "lr": lr,
                                      "steps_per_s": rate, "time": time.time()}) + "\n")
                log.flush()
            if checkpoint_now:
                save_checkpoint(cfg, stage, step, model, ema, opt, unet_cfg, t5_path, losses)
        if checkpoint_now:
            saved = step
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                snapshot(cfg, spec, ema, batch, text_cache, step, losses, device)
        if step == cfg.stop_at:
            break
    bar.close()
    if log:
        log.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    recent = [v for _, v in losses[-100:]]
    return {"stage": stage, "steps": step, "final_loss": sum(recent) / max(1, len(recent)),
            "seconds": time.time() - t0}


def last_good(cfg, stage, saved):
    """Where the last good state is, for the stop messages."""
    if saved is None:
        return "no checkpoint was written yet"
    return f"{checkpoint_path(cfg, stage)} holds the last good state (step {saved})"


def check_finite_weights(model, ema, cfg, stage, step, saved):
    """Stop before a checkpoint of NaN or infinite weights or EMA overwrites the last good one."""
    for what, net in (("weights", model), ("EMA", ema)):
        bad = checks.nonfinite_tensors(net.state_dict())
        if bad:
            raise SystemExit(f"train.py: the {stage} {what} hold NaN or infinity at step {step} ({bad[0]}); "
                             f"stopped, {last_good(cfg, stage, saved)}")


def step_seed(*keys):
    """A 63-bit seed from integers (seed, rank, step, micro-step), the same in every process."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def load_text_encoder(path):
    if not os.path.isdir(path):
        refuse(f"no T5 directory at {path}" + (
            " (build the toy text encoder with `python train.py --stage all`)" if path == TOY_T5 else ""))
    try:
        return text.load_t5(path)
    except text.T5LoadError as e:
        refuse(str(e))


def export_inference(run_dir, dest, stages=cascade.STAGES):
    """Inference checkpoints: EMA weights in float16, with model and optimizer left out (None).

    These are what ships in checkpoints/toy (20 MiB in all); sample.py reads them and full
    training checkpoints alike, always using `ema`. `stages`: which of the run's stages to export.
    """
    os.makedirs(dest, exist_ok=True)
    for stage in stages:
        ckpt = load_checkpoint(os.path.join(run_dir, f"{stage}.pt"))
        slim = {k: ckpt[k] for k in ("format_version", "stage", "scale", "step", "config")}
        slim.update(model=None, optimizer=None, t5=os.path.relpath(ckpt["t5"], dest) if ckpt["t5"] else "",
                    ema={k: v.half() if v.is_floating_point() else v for k, v in ckpt["ema"].items()})
        atomic_save(slim, os.path.join(dest, f"{stage}.pt"))


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.dry_run:
        return dry_run(cfg)
    if cfg.stage != "all":
        result = train_stage(cfg, cfg.stage)
        if is_main():
            print(json.dumps(result))
        return result
    return train_all(cfg)


# The two chains of `--stage all`: on a machine with two or more cores they train side by side,
# one thread each (small 1-D convolutions scale poorly across threads; two processes do better).
# "text" is the toy text encoder (the MuLan-style model's text tower); the stages that read text
# wait for it, the vocoder (audio only) starts at once. Every stage trains on real audio (the
# cascader's input is the real clip taken down to 3.2 kHz), so none waits for another. The chains
# are the waveform path and the spectrogram path (with the stereo super-res), balanced by time:
# text 8 + wave generator 75 + cascader 17 + super-res 16 minutes against vocoder 45 +
# spectrogram generator 57 + stereo 9, as timed end to end (bench/results_stage_times.md).
CHAINS = (("text", "wave-generator", "cascader", "super-res"), ("vocoder", "spec-generator", "stereo"))
TEXT_STAGES = tuple(s for s in cascade.STAGES if cascade.stage_spec(s).has_text)


def train_all(cfg):
    """The whole toy cascade: corpus, text encoder (MuLan text tower), the five stages; then export."""
    results = []
    os.makedirs(cfg.out, exist_ok=True)
    if not cfg.data and not os.path.exists(os.path.join(TOY_DATA, "manifest.jsonl")):
        build_toy_corpus()
    if not cfg.data and not os.path.exists(os.path.join(TOY_STEREO_DATA, "manifest.jsonl")):
        build_toy_corpus(stereo=True)
    text_ready = TextReady()
    chains = [[s for s in chain if s != "text" or not cfg.t5] for chain in CHAINS]
    if cfg.t5:
        text_ready.finish(ok=True)
    if (os.cpu_count() or 1) < 2:
        run_chain(cfg, sorted(sum(chains, []), key=lambda s: s != "text"), results, text_ready)
    else:
        threads = [threading.Thread(target=run_chain, args=(cfg, chain, results, text_ready)) for chain in chains]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    missing = [s for s in cascade.STAGES if not os.path.exists(checkpoint_path(cfg, s))]
    if missing:
        raise SystemExit(f"train.py: stages failed: {', '.join(missing)} (see {cfg.out}/STAGE.stdout.log)")
    export_inference(cfg.out, TOY_EXPORT)
    for r in results:
        print(json.dumps(r))
    return results


class TextReady:
    """The text encoder's state, shared by the two chains: wait() blocks until it is trained, then says if it was."""

    def __init__(self):
        self.event, self.ok = threading.Event(), False

    def finish(self, ok):
        self.ok = ok
        self.event.set()

    def wait(self):
        self.event.wait()
        return self.ok


def run_chain(cfg, chain, results, text_ready):
    """Train the stages of one chain one after the other, each in its own one-thread process.

    A stage that reads text first waits for the text encoder; a failed stage ends its chain (and
    a failed text encoder the other chain's text stages too).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for stage in chain:
        t0 = time.time()
        if stage == "text":
            args = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pseudolabel.py"), "train",
                    "--manifest", cfg.data or os.path.join(TOY_DATA, "manifest.jsonl"), "--out", os.path.dirname(TOY_T5),
                    "--export-t5", TOY_T5]
        else:
            if stage in TEXT_STAGES and not text_ready.wait():
                return
            args = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--scale", "toy", "--out", cfg.out,
                    "--seed", str(cfg.seed), "--workers", str(cfg.workers)]
            args += ["--t5", cfg.t5] if cfg.t5 and stage in TEXT_STAGES else []
            for flag in ("data", "cache_dir", "steps", "batch_size", "eval_every"):
                if getattr(cfg, flag) != getattr(TrainConfig, flag):
                    args += ["--" + flag.replace("_", "-"), str(getattr(cfg, flag))]
            args += ["--resume"] if cfg.resume else []
        name = "text-encoder" if stage == "text" else stage
        with open(os.path.join(cfg.out, f"{name}.stdout.log"), "w") as log:
            done = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        if stage == "text":
            text_ready.finish(ok=done.returncode == 0)
            results.append({"stage": "text encoder (MuLan text tower)", "seconds": time.time() - t0})
        if done.returncode != 0:
            print(f"train.py: {name} failed (exit {done.returncode}); see {cfg.out}/{name}.stdout.log", file=sys.stderr)
            return
        if stage != "text":
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
