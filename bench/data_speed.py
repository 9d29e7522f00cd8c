"""How fast the toy corpus is synthesized, and how fast its clips load, on this CPU.

    python bench/data_speed.py [--clips 300] [--seconds 4] [--workers 1] [--out DIR]

Prints clips per minute for `data.py toy` (synthesis + FLAC writing + captions), then for
`data.load_clips` at 16 kHz without and with the decoded-audio cache. The target is >= 1,000
clips per minute of synthesis on one core, so that the default 2,000 + 400 clip toy corpus takes
about two minutes.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import toy_corpus  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=None, help="keep the corpus here (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="toy_bench_")
    config = toy_corpus.ToyConfig(clips=args.clips, unlabeled=0, seconds=args.seconds,
                                  workers=args.workers)
    start = time.time()
    toy_corpus.write_corpus(out, config, progress=False)
    synth = time.time() - start
    size = sum(os.path.getsize(os.path.join(out, "audio", f))
               for f in os.listdir(os.path.join(out, "audio")))
    print(f"synthesis: {args.clips} clips of {args.seconds:g} s in {synth:.1f} s = "
          f"{args.clips / synth * 60:.0f} clips/min ({args.workers} worker(s)), "
          f"{size / args.clips / 1024:.0f} KiB per clip")

    entries = data.read_manifest(os.path.join(out, "manifest.jsonl"))
    cache = os.path.join(out, "cache")
    for label in ("decode + resample to 16 kHz", "from the cache"):
        start = time.time()
        clips, _ = data.load_clips(entries, 16000, cache_dir=cache, progress=False)
        elapsed = time.time() - start
        print(f"load_clips, {label}: {len(clips) / elapsed * 60:.0f} clips/min")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
