"""
Forward time of text.T5Encoder against transformers' T5EncoderModel, same config, same weights,
same inputs, same run; prints the median of the per-run ratios ours / theirs
(below 1: ours is faster).

    python bench/t5_speed.py [--threads 2] [--reps 10] [--dtype float32|bfloat16] [--device cpu|cuda]
                             [--batch 8] [--length 64] [--attn sdpa,eager]

transformers is not a dependency of this project: without it this prints a message and exits 0
(run it where transformers is installed, e.g. the venv of tests/fixtures/make_t5_fixtures.py).
Weights are random (transformers' init); speed does not depend on them.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import text  # noqa: E402

# batch 8 x 64 tokens: the wave generator's text length (Table 8), a small training batch
PRESETS = {
    "t5-small-like": text.T5Config(d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6,
                                   feed_forward_proj="relu"),
    "t5-v1_1-base-like": text.T5Config(d_model=768, d_kv=64, num_heads=12, d_ff=2048, num_layers=12,
                                       feed_forward_proj="gated-gelu"),
}


def make_pair(config, attn, dtype, device):
    """(ours, theirs): the same random weights in text.T5Encoder and transformers' T5EncoderModel."""
    import transformers
    hf_config = transformers.T5Config(**vars(config))
    torch.manual_seed(0)
    theirs = transformers.T5EncoderModel._from_config(hf_config, attn_implementation=attn)
    theirs = theirs.to(device=device, dtype=dtype).eval()
    state = theirs.state_dict()
    ours = text.T5Encoder(config)
    ours.load_state_dict(text.state_from_checkpoint(config, state.__getitem__))
    return ours.to(device=device, dtype=dtype).eval(), theirs


def batch(config, B, L, device):
    """Token ids with padding: lengths from L/4 to L."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (B, L), generator=g)
    lengths = torch.linspace(L // 4, L, B).long()
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, 0).to(device), mask.to(device)


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def compare(name, config, attn, args):
    dtype = getattr(torch, args.dtype)
    ours, theirs = make_pair(config, attn, dtype, args.device)
    ids, mask = batch(config, args.batch, args.length, args.device)
    run_ours = lambda: ours(ids, mask)
    run_theirs = lambda: theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    err = (run_ours().float() - run_theirs().float())[mask].abs().max().item()
    for _ in range(3):                                        # warm-up
        run_ours(), run_theirs()
    t_ours, t_theirs = [], []
    for _ in range(args.reps):                                # interleaved, so load drifts hit both
        t_ours.append(timed(run_ours, args.device))
        t_theirs.append(timed(run_theirs, args.device))
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    ratio = statistics.median(x / y for x, y in zip(t_ours, t_theirs))   # pairwise: robust to load
    print(f"{name:18s} {attn:6s} ours {a * 1e3:8.1f} ms  transformers {b * 1e3:8.1f} ms  "
          f"ratio {ratio:5.2f}  max |diff| {err:.1e}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--attn", default="sdpa,eager", help="transformers attention implementations to compare")
    args = p.parse_args()
    try:
        import transformers
    except ImportError:
        print("bench/t5_speed.py: transformers is not installed; skipped (see the docstring)")
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}, "
          f"{args.threads} threads, {args.dtype}, batch {args.batch} x {args.length} tokens, median of {args.reps}")
    for name, config in PRESETS.items():
        for attn in args.attn.split(","):
            compare(name, config, attn, args)


if __name__ == "__main__":
    main()
