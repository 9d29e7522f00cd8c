"""
Section 3.5 at scale: pseudo-label N clips against a vocabulary of M captions with bounded memory.

    python bench/pseudolabel_scale.py [--clips 10000] [--vocab 1000000] [--dim 128] [--k 10]
                                      [--chunk 16384] [--clip-block 2048] [--threads 2] [--disk DIR]

Embeddings are synthetic (random unit vectors, each vocabulary chunk drawn from its own seed),
because the towers are not the point: steps 3-4 of the pipeline are (pseudolabel.topk_chunked,
caption_counts, sample_inverse_frequency). The vocabulary never exists in memory at once; with
--disk DIR it is first written to DIR as the same .npy cache that `pseudolabel.py label` uses,
then streamed back with pseudolabel.npy_chunks (the path a real run takes on its second pass).
Reports wall time per phase and peak memory: the process's peak resident set (getrusage, which
includes the ~300 MB of torch itself, so the baseline before the work is printed too) and the
peak of Python-side allocations (tracemalloc; numpy arrays included, torch tensors not).
For scale: the full vocabulary is M * E * 4 bytes (512 MB at 1M x 128) and a full similarity
matrix N * M * 4 bytes (40 GB at 10k x 1M).
"""
import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pseudolabel  # noqa: E402


def peak_rss_mb():
    """Peak resident set size of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


GEN_BLOCK = 1024     # synthetic rows are drawn in blocks of this many, block b from seed (seed, b)


def synthetic_rows(start, stop, dim, seed):
    """Rows [start, stop) of the synthetic vocabulary, the same whatever the chunking."""
    blocks = []
    for b in range(start // GEN_BLOCK, (stop - 1) // GEN_BLOCK + 1):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        block = torch.randn(GEN_BLOCK, dim, generator=g)
        lo, hi = max(start, b * GEN_BLOCK) - b * GEN_BLOCK, min(stop, (b + 1) * GEN_BLOCK) - b * GEN_BLOCK
        blocks.append(block[lo:hi])
    return F.normalize(torch.cat(blocks), dim=-1)


def synthetic_chunks(rows, dim, chunk, seed=1):
    """The vocabulary as (start, (c, dim) unit vectors), generated one chunk at a time."""
    for start in range(0, rows, chunk):
        yield start, synthetic_rows(start, min(rows, start + chunk), dim, seed)


def write_npy(path, chunks, rows, dim):
    """Write the chunks as one float32 .npy, chunk by chunk (as pseudolabel.embed_vocabulary)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for _, c in chunks:
            f.write(c.numpy().astype("<f4").tobytes())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--clips", type=int, default=10_000)
    p.add_argument("--vocab", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--k-prime", type=int, default=3)
    p.add_argument("--chunk", type=int, default=16384, help="vocabulary rows per chunk")
    p.add_argument("--clip-block", type=int, default=2048, help="clips per similarity block")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--disk", default="", help="write the vocabulary here first and stream it back")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = peak_rss_mb()
    tracemalloc.start()
    clips = F.normalize(torch.randn(args.clips, args.dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    chunks = synthetic_chunks(args.vocab, args.dim, args.chunk)
    times = {}
    if args.disk:
        os.makedirs(args.disk, exist_ok=True)
        path = os.path.join(args.disk, "bench-vocab.npy")
        t = time.time()
        write_npy(path, chunks, args.vocab, args.dim)
        times["write vocabulary .npy"] = time.time() - t
        chunks = pseudolabel.npy_chunks(path, args.chunk)
    t = time.time()
    _, top = pseudolabel.topk_chunked(clips, chunks, args.k, args.clip_block)
    times["top-K (step 3)"] = time.time() - t
    t = time.time()
    top = top.numpy()
    counts = pseudolabel.caption_counts(top, args.vocab)
    picks = pseudolabel.sample_inverse_frequency(top, counts, args.k_prime, np.random.default_rng(0))
    times["counts + K' draws (step 4)"] = time.time() - t
    _, py_peak = tracemalloc.get_traced_memory()
    entropy_sampled = pseudolabel.label_entropy(picks)["entropy_bits"]
    entropy_greedy = pseudolabel.label_entropy(top[:, :args.k_prime])["entropy_bits"]
    print(f"{args.clips:,} clips x {args.vocab:,} captions, E={args.dim}, K={args.k}, K'={args.k_prime}, "
          f"chunk {args.chunk:,}, clip block {args.clip_block:,}, {args.threads} threads, "
          f"{'via disk' if args.disk else 'in memory'}")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds:8.1f} s")
    print(f"  {'total':28s} {sum(times.values()):8.1f} s")
    print(f"  peak RSS {peak_rss_mb():.0f} MB (torch and numpy loaded, before the work: {base:.0f} MB; "
          f"increase {peak_rss_mb() - base:.0f} MB); peak traced Python/numpy allocations "
          f"{py_peak / 2**20:.0f} MB")
    print(f"  for comparison: the vocabulary alone {args.vocab * args.dim * 4 / 2**20:.0f} MB, the full "
          f"similarity matrix {args.clips * args.vocab * 4 / 2**30:.1f} GB")
    print(f"  distinct captions in the top-K lists {int((counts > 0).sum()):,}; entropy of K' sampled "
          f"{entropy_sampled:.2f} bits vs top-{args.k_prime} {entropy_greedy:.2f} bits")
    if args.disk:
        os.remove(path)


if __name__ == "__main__":
    main()
