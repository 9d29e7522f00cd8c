"""Is the toy wave generator short of training, or of something else? (GPU)

    python bench/toy_scaling.py prepare [--clips 1200] [--out .gpudata/clips3200.pt]   # here, once
    python bench/toy_scaling.py run --data .gpudata/clips3200.pt [--runs 16x4500,64x4500] [--pairs 20]

`prepare` stores the toy corpus's training clips at 3.2 kHz (float16) with their manifest entries,
so that a machine without the corpus (or soundfile) can train on them. `run` trains the toy wave
generator with train.py's own loop (`train.train_stage`, the toy recipe: lr 1e-3, 100 warm-up
steps, cosine to the last step, EMA 0.999), once per BATCHxSTEPS in --runs, and measures its own
3.2 kHz output on bench/adherence.py's prompt pairs (tempo, register, drums) at two CFG scales.
The CPU recipe is 16x4500; larger batches and more steps show whether adherence grows with
training. Printed as a markdown table, with the training time of each run.
"""
import argparse
import os
import sys
import tempfile
import time
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import soundfile  # noqa: F401
except ImportError:            # the GPU machine's image has no soundfile; no audio is decoded here
    sys.modules["soundfile"] = types.ModuleType("soundfile")
import adherence  # noqa: E402
import cascade  # noqa: E402
import text  # noqa: E402
import train  # noqa: E402

STAGE = "wave-generator"


def prepare(args):
    spec = cascade.stage_spec(STAGE, "toy")
    cfg = train.resolve_config(train.TrainConfig(stage=STAGE), spec)
    clips, _ = train.load_stage_clips(cfg, spec)
    picks = np.random.default_rng(0).permutation(len(clips))[:args.clips]
    entries = [{k: v for k, v in clips[i][0].items() if k != "audio"} for i in picks]
    waves = torch.from_numpy(np.stack([cascade.fit_length(clips[i][1], spec.length) for i in picks])).half()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"entries": entries, "waves": waves}, args.out)
    print(f"{args.out}: {len(entries)} clips, {os.path.getsize(args.out) / 2**20:.1f} MiB")


def pair_scores_at(stage, tokenizer, encoder, pairs, w, device):
    """bench/adherence.py's pair scores of the generator's own output at CFG scale w."""
    prompts = [p for kind in adherence.KINDS for pair in pairs[kind] for p in pair]   # pair_scores' order
    ids, mask = tokenizer(prompts, stage.spec.token_len)
    with torch.no_grad():
        emb = encoder(ids.to(device), mask.to(device))
        x = cascade.run_stage(stage, cascade.Sampling(w=w), (len(prompts), 1, stage.spec.length),
                              torch.Generator().manual_seed(0), emb, mask.to(device),
                              torch.zeros(len(prompts), dtype=torch.bool))
    return adherence.pair_scores([v[0].float().cpu().numpy() for v in x], stage.spec.sample_rate, pairs)


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    carried = torch.load(args.data, map_location="cpu", weights_only=True)    # tensors and plain data only
    clips = [(e, w.float().numpy()) for e, w in zip(carried["entries"], carried["waves"])]
    train.load_stage_clips = lambda cfg, spec: (clips, args.data)
    tokenizer, encoder = text.load_t5(args.t5, device=device)
    pairs = adherence.prompt_pairs(args.pairs)
    rows = []
    for item in args.runs.split(","):
        batch, steps = (int(v) for v in item.split("x"))
        out = tempfile.mkdtemp(prefix="toy_scaling_")
        cfg = train.TrainConfig(stage=STAGE, out=out, steps=steps, batch_size=batch, t5=args.t5, workers=0,
                                eval_every=0, ckpt_every=steps, log_every=500, device=str(device))
        t0 = time.time()
        train.train_stage(cfg, STAGE)
        minutes = (time.time() - t0) / 60
        stage = cascade.StageModel(os.path.join(out, f"{STAGE}.pt"), device)
        for w in args.w:
            scores = pair_scores_at(stage, tokenizer, encoder, pairs, w, device)
            rows.append(f"| {batch} x {steps} | {minutes:.1f} | {w:g} | "
                        + " | ".join(f"{scores[k]:.0%}" for k in adherence.KINDS) + " |")
            print(rows[-1], flush=True)
    print(f"\nToy wave generator, own 3.2 kHz output, {args.pairs} pairs per kind, {len(clips)} clips, on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}:\n")
    print("| batch x steps | train min | CFG w | " + " | ".join(adherence.KINDS) + " |")
    print("|---|---|---|" + "---|" * len(adherence.KINDS))
    print("\n".join(rows))


def main():
    p = argparse.ArgumentParser(description="Toy wave generator: adherence against training length.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("prepare", help="store the training clips at 3.2 kHz (run where the corpus is)")
    a.add_argument("--clips", type=int, default=1200)
    a.add_argument("--out", default=".gpudata/clips3200.pt")
    b = sub.add_parser("run", help="train and measure, once per BATCHxSTEPS")
    b.add_argument("--data", default=".gpudata/clips3200.pt")
    b.add_argument("--runs", default="16x4500,64x4500")
    b.add_argument("--pairs", type=int, default=20)
    b.add_argument("--w", type=float, nargs="+", default=[3.0, 10.0])
    b.add_argument("--t5", default="checkpoints/toy/t5")
    b.add_argument("--device", default="")
    args = p.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
