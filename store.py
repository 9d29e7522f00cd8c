"""A prepared collection: every track decoded once, resampled whole, read back clip by clip.

`python data.py prepare --manifest M --out DIR` turns a manifest into DIR, and
`python train.py --data DIR` trains from it in bounded memory: a training process holds a few
numbers per track, never the audio, whatever the size of the collection.

What is kept from the paper: section 3.3.1's FFT resampling is applied to the whole track (it
treats its input as one period of a periodic signal, so a crop resampled alone would wrap its
ends into each other), and section 3.6's non-overlapping 30 s clips are cut from the resampled
track when training reads it (`StoreClips`), at whatever clip length the scale asks for. Each
clip is then cropped by cascade.training_example exactly as an in-memory clip is.

Layout of DIR (every array is raw little-endian samples, memory-mappable with np.memmap):

    prepare.json              settings (manifest and its SHA-1, rates, dtype, shard size) and,
                              once complete, a summary (tracks, hours, skipped files)
    shards/SSSSS.RATE.bin     the tracks of shard SSSSS at RATE Hz, back to back
    shards/SSSSS.json         that shard's table (per track: offset, length, scale per rate) and its
                              skipped files; written last, so its presence marks the shard done
    index/*.npy               the merged tables: shard, offsets, lengths, scales (one row per track)
    entries.jsonl             the manifest entries of the usable tracks, one per line, and
    index/entry_pos.npy       their byte offsets, so a worker reads one entry without the rest

Resumable: a killed run leaves finished shards (a json each) and at most one unfinished one per
process, which the next run with the same settings writes again. Bad files are skipped, named on
stderr and counted, as data.load_clips does.

Storage dtype: int16 by default, each track and rate scaled by its own peak (value = q * scale),
so the quantization noise sits ~96 dB under the track's peak, the precision of the 16-bit
sources most collections hold, at half the disk and half the reads of float32 (50 h at 24, 16
and 3.2 kHz: 15.6 GB against 31 GB). `--dtype float32` stores data.load_track's output exactly
(the in-memory path's samples, bit for bit).
"""
import hashlib
import json
import os
import sys

import numpy as np

import checks
import data

FORMAT = 1
DEFAULT_RATES = tuple(sorted(set(data.STAGE_SAMPLE_RATES.values())))   # 3200, 16000, 24000
DTYPES = ("int16", "float32")
INDEX_ARRAYS = ("shard", "offsets", "lengths", "scales", "entry_pos")


StoreError = data.StoreError   # defined in data.py, whose command line reports it in one line


# ----------------------------------------------------------------------------------------------
# Writing: `python data.py prepare`

def _atomic_write(path, write):
    """Write through `write(file)` (a binary file object) with checks.atomic_write: a temporary file
    beside `path`, flushed, renamed over it, removed on failure."""
    def to_file(tmp):
        with open(tmp, "wb") as f:
            write(f)
    checks.atomic_write(path, to_file)


def _write_json(path, obj):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _settings(manifest, rates, dtype, shard_tracks):
    with open(manifest, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    return {"format": FORMAT, "manifest": os.path.abspath(manifest), "manifest_sha1": sha1,
            "rates": sorted(int(r) for r in rates), "dtype": dtype, "shard_tracks": int(shard_tracks)}


def _begin(out, settings):
    """Create `out` or check that the run there used the same settings; return the old summary."""
    path = os.path.join(out, "prepare.json")
    if os.path.exists(path):
        old = _read_json(path)
        keys = ("format", "manifest_sha1", "rates", "dtype", "shard_tracks")
        changed = [k for k in keys if old.get(k) != settings[k]]
        if changed:
            raise StoreError(f"{out} was prepared with other settings ({', '.join(changed)}); "
                             "use another --out or the same settings")
        return old
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    _write_json(path, dict(settings, complete=False))
    return dict(settings, complete=False)


def prepare_track(path, rates, dtype):
    """Decode one file, mix down and FFT-resample it whole to each rate (data.load_track's steps).

    :return: ("ok", {rate: array}, {rate: scale}, source seconds) or ("skip", reason).
    """
    waves, scales = {}, {}
    try:
        mono, rate = data.decode_audio(path)
        for r in rates:
            waves[r], scales[r] = quantize(data.resample_track(mono, rate, r), dtype)
    except data.AudioError as e:
        return ("skip", str(e))
    return ("ok", waves, scales, len(mono) / rate)


def quantize(wave, dtype):
    """float32 [T] -> (stored array, scale) with wave ~= stored * scale (exact for float32)."""
    if dtype == "float32":
        return wave, 1.0
    scale = float(np.abs(wave).max()) / 32767.0 or 1.0
    return np.clip(np.round(wave.astype(np.float64) / scale), -32767, 32767).astype(np.int16), scale


def _prepare_job(job):
    """Pool task: (manifest line number, path, rates, dtype) -> (line number, prepare_track's result)."""
    i, path, rates, dtype = job
    return i, prepare_track(path, rates, dtype)


class ShardWriter:
    """Append the tracks of one shard to its per-rate files; `close` makes the shard final."""

    def __init__(self, out, shard, rates):
        self.out, self.shard, self.rates = out, shard, rates
        self.base = os.path.join(out, "shards", f"{shard:05d}")
        self.files = {r: open(f"{self.base}.{r}.bin.part", "wb") for r in rates}
        self.offsets = {r: 0 for r in rates}
        self.tracks, self.skipped, self.seconds = [], [], 0.0

    def add(self, i, path, result):
        if result[0] == "skip":
            self.skipped.append([path, result[1]])
            return
        _, waves, scales, seconds = result
        row = {"line": i, "offsets": [], "lengths": [], "scales": [], "seconds": seconds}
        for r in self.rates:
            row["offsets"].append(self.offsets[r])
            row["lengths"].append(len(waves[r]))
            row["scales"].append(scales[r])
            self.files[r].write(waves[r].astype(waves[r].dtype.newbyteorder("<"), copy=False).tobytes())
            self.offsets[r] += len(waves[r])
        self.tracks.append(row)
        self.seconds += seconds

    def close(self):
        for r, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(f"{self.base}.{r}.bin.part", f"{self.base}.{r}.bin")
        _write_json(self.base + ".json", {"shard": self.shard, "tracks": self.tracks, "skipped": self.skipped,
                                          "seconds": self.seconds})


def prepare(manifest, out, rates=DEFAULT_RATES, dtype="int16", workers=1, shard_tracks=None, progress=True):
    """Prepare `manifest` into folder `out` (layout in the module docstring); resume if begun.

    :param rates: sample rates to store (Hz); train.py needs the rate of the stage it trains.
    :param workers: processes decoding and resampling in parallel (this process writes).
    :param shard_tracks: manifest lines per shard, the unit of resumption (None: the folder's, else 256).
    :return: the summary written to prepare.json.
    """
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise StoreError(f"dtype must be one of {', '.join(DTYPES)}")
    entries = data.read_manifest(manifest)
    if not entries:
        raise StoreError(f"{manifest}: no entries")
    if shard_tracks is None:
        began = os.path.join(out, "prepare.json")
        shard_tracks = _read_json(began)["shard_tracks"] if os.path.exists(began) else 256
    settings = _settings(manifest, rates, dtype, shard_tracks)
    shard_tracks = settings["shard_tracks"]
    _begin(out, settings)
    rates, shards = settings["rates"], range((len(entries) + shard_tracks - 1) // shard_tracks)
    todo = [k for k in shards if not os.path.exists(_shard_json(out, k))]
    lines = [i for k in todo for i in range(k * shard_tracks, min(len(entries), (k + 1) * shard_tracks))]
    jobs = ((i, entries[i]["audio"], rates, dtype) for i in lines)
    bar = tqdm(total=len(entries), initial=len(entries) - len(lines), desc="prepare", unit="track",
               disable=not progress, dynamic_ncols=True)
    pool = None
    if workers > 1:
        import multiprocessing
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        results = pool.imap(_prepare_job, jobs, chunksize=1) if pool else map(_prepare_job, jobs)
        _write_shards(out, entries, rates, shard_tracks, results, bar)
    finally:
        if pool:
            pool.terminate()
        bar.close()
    return finish(out, entries, settings)


def _shard_json(out, k):
    return os.path.join(out, "shards", f"{k:05d}.json")


def _write_shards(out, entries, rates, shard_tracks, results, bar):
    """Consume (line, result) in line order, closing each shard after its last line."""
    writer = None
    for i, result in results:
        k = i // shard_tracks
        if writer is None or writer.shard != k:
            writer = ShardWriter(out, k, rates)
        writer.add(i, entries[i]["audio"], result)
        bar.update(1)
        if i + 1 == min(len(entries), (k + 1) * shard_tracks):
            writer.close()


def finish(out, entries, settings):
    """Merge the shard tables into index/*.npy and entries.jsonl; report skipped files."""
    tables = [_read_json(_shard_json(out, k)) for k in range((len(entries) + settings["shard_tracks"] - 1)
                                                                 // settings["shard_tracks"])]
    rows = [(t["shard"], row) for t in tables for row in t["tracks"]]
    skipped = [s for t in tables for s in t["skipped"]]
    os.makedirs(os.path.join(out, "index"), exist_ok=True)
    arrays = {"shard": np.array([k for k, _ in rows], np.int32).reshape(-1),
              "offsets": np.array([r["offsets"] for _, r in rows], np.int64).reshape(-1, len(settings["rates"])),
              "lengths": np.array([r["lengths"] for _, r in rows], np.int64).reshape(-1, len(settings["rates"])),
              "scales": np.array([r["scales"] for _, r in rows], np.float32).reshape(-1, len(settings["rates"]))}
    lines = [json.dumps(entries[r["line"]], ensure_ascii=False).encode() + b"\n" for _, r in rows]
    arrays["entry_pos"] = np.cumsum([0] + [len(line) for line in lines]).astype(np.int64)
    _atomic_write(os.path.join(out, "entries.jsonl"), lambda f: f.writelines(lines))
    for name, array in arrays.items():
        _atomic_write(os.path.join(out, "index", f"{name}.npy"), lambda f, a=array: np.save(f, a))
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    summary = dict(settings, complete=True, tracks=len(rows), skipped=len(skipped),
                   hours=sum(t["seconds"] for t in tables) / 3600)
    _write_json(os.path.join(out, "prepare.json"), summary)
    return summary


# ----------------------------------------------------------------------------------------------
# Reading: train.py's clips

def is_prepared(folder):
    """True for a folder that `prepare` has finished."""
    path = os.path.join(folder, "prepare.json")
    return os.path.isfile(path) and _read_json(path).get("complete") is True


class StoreClips:
    """The clips of a prepared folder at one rate, read from disk one at a time.

    Clip i is the same as the i-th clip data.load_clips gives for the same manifest (same order,
    same split_clips cut, same samples with dtype float32; within the int16 step otherwise), so
    train.StageBatches draws the same batches from either. What stays in memory: five small
    arrays per track (memory-mapped, so only the pages touched), and the clip table; the audio is
    read with pread, which fills the page cache but not this process's memory.
    """

    def __init__(self, folder, sample_rate, clip_seconds):
        meta = _read_json(os.path.join(folder, "prepare.json"))
        if not meta.get("complete"):
            raise StoreError(f"{folder}: preparation not finished (run data.py prepare again to resume)")
        if sample_rate not in meta["rates"]:
            raise StoreError(f"{folder} holds {meta['rates']} Hz, not {sample_rate} Hz "
                             "(prepare it with --rates including that rate)")
        self.folder, self.sample_rate, self.dtype = folder, sample_rate, np.dtype(meta["dtype"]).newbyteorder("<")
        self.meta = meta
        column = meta["rates"].index(sample_rate)
        index = {n: np.load(os.path.join(folder, "index", f"{n}.npy"), mmap_mode="r") for n in INDEX_ARRAYS}
        self.shard, self.entry_pos = index["shard"], index["entry_pos"]
        self.offsets, self.lengths = index["offsets"][:, column], index["lengths"][:, column]
        self.scales = index["scales"][:, column]
        self.clip_seconds, self.clip_len = clip_seconds, int(round(clip_seconds * sample_rate))
        per_track = np.where(self.lengths <= self.clip_len, 1, self.lengths // self.clip_len)
        self.first = np.concatenate([[0], np.cumsum(per_track)]).astype(np.int64)   # (tracks + 1,)
        self._files, self._pid = {}, None

    def __len__(self):
        return int(self.first[-1])

    def locate(self, i):
        """Clip i -> (track, clip number within the track)."""
        track = int(np.searchsorted(self.first, i, side="right")) - 1
        return track, int(i - self.first[track])

    def _fd(self, name):
        if self._pid != os.getpid():           # a DataLoader worker: open its own descriptors
            self._files, self._pid = {}, os.getpid()
        if name not in self._files:
            self._files[name] = os.open(os.path.join(self.folder, name), os.O_RDONLY)
        return self._files[name]

    def _read(self, name, start, count):
        raw = os.pread(self._fd(name), count, start)
        if len(raw) != count:
            raise StoreError(f"{self.folder}/{name}: file shorter than its index (damaged?)")
        return raw

    def wave(self, i):
        """Clip i: float32 [T] at sample_rate (T = clip length, or the whole track when shorter)."""
        track, k = self.locate(i)
        length = int(self.lengths[track])
        count = length if length <= self.clip_len else self.clip_len
        start = int(self.offsets[track]) + k * self.clip_len
        name = f"shards/{int(self.shard[track]):05d}.{self.sample_rate}.bin"
        raw = self._read(name, start * self.dtype.itemsize, count * self.dtype.itemsize)
        samples = np.frombuffer(raw, self.dtype)
        if self.dtype == np.float32:
            return samples.astype(np.float32)                       # a writable copy
        return samples.astype(np.float32) * np.float32(self.scales[track])

    def entry(self, i):
        """The manifest entry of clip i, with `clip_index` and `clip_start` as data.load_clips adds them."""
        track, k = self.locate(i)
        start, end = int(self.entry_pos[track]), int(self.entry_pos[track + 1])
        entry = json.loads(self._read("entries.jsonl", start, end - start))
        return dict(entry, clip_index=k, clip_start=k * self.clip_seconds)
