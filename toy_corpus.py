"""The toy corpus: folk tunes from music21's corpus, synthesized and captioned (sections 3.5-3.6).

The paper trains on 6.8M tracks with pseudo labels (section 3.5) and metadata (section 3.6); none
of that is public. This stands in for it at a scale a laptop CPU can train on, while keeping the
three kinds of text the paper has:
- long-form sentences from varied templates and synonyms (like LaMDA-LF), three per clip;
- short tags (like Rater-SF);
- metadata (title, composer, form, region, key, source) as the "named-entity tags" of 3.6.
Every clip's TRUE attributes go into the manifest, so that prompt adherence can be measured
(audio_measures.py's onset_rate, median_pitch, percussive_ratio).

The tunes are melodies from the corpus that ships with music21: reels, jigs and hornpipes (Ryan's
Mammoth Collection, O'Neill's Music of Ireland), Scottish airs (Aird's), American fife tunes, folk
songs of the Essen collection (Germany, Luxembourg, Ireland, China) and Bach chorale melodies.
They are parsed once into assets/tunes.json (`python data.py tunes` rebuilds it). A small numpy
synthesizer renders each clip with a chosen instrument, tempo, register, mode, optional chords
(drawn from the tune's own notes, one triad per bar) and an optional drum kit.

The vocabulary holds for every clip:
| word | how the corpus makes it true |
| slow / fast | bpm drawn in 60-80 / 140-180; medium clips (95-125 bpm) carry neither word |
| bass | the tune is transposed and octave-folded into MIDI 28-52 |
| flute | the tune is folded into MIDI 72-88 (E6 = 1319 Hz < 1.6 kHz) |
| piano, guitar, organ | the tune is folded into MIDI 55-79, a middle register |
| drums | kick, snare and hi-hat play on every beat of the clip |
| solo | said of some clips without drums, never of one with drums |
| major, minor | every note is snapped to the major or natural-minor scale of the clip's key |
A "beat" is the tune's own pulse: the meter's beat (a quarter, or a dotted quarter in 6/8),
halved or doubled so that the tune has about two notes per beat, so that the tempo word is
heard as note rate. Titles, composers and regions that contain a vocabulary word are left out
of the asset, so metadata never says "slow" over a fast clip.

Simplifications: no repeats, ornaments or dynamics from the score; one instrument per clip
(flute and bass clips have no chords, so that the tune is the only pitched voice); additive
synthesis, not samples.
"""
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass, fields

import numpy as np
import soundfile as sf
from tqdm import tqdm

TUNES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tunes.json")
SAMPLE_RATE = 24000  # the toy corpus is written at the super-res stage's rate
TICKS = 12  # note times in the asset are integers in twelfths of a quarter note
MAX_QUARTERS = 96  # at most this many quarter notes of each tune are kept

CLI_DESCRIPTION = """Synthesize the toy corpus. Writes DIR/manifest.jsonl (captioned clips),
DIR/unlabeled/manifest.jsonl (clips with empty captions, true attributes kept),
DIR/heldout_captions.jsonl (other phrasings, with attribute labels, for evaluation prompts) and
the 24 kHz audio files (FLAC by default) under DIR/audio/. The same seed gives the same
bytes."""

VOCABULARY = ("slow", "fast", "bass", "flute", "piano", "guitar", "organ", "drums", "solo",
              "major", "minor")
_VOCAB_RE = re.compile(r"\b(" + "|".join(VOCABULARY) + r"|drum|slowly|air lent)\b", re.I)


# ----------------------------------------------------------------------------------------------
# Building the tune asset from music21's corpus (run once; `python data.py tunes`)

# (corpus path, how many tunes, defaults for metadata the files do not give)
_ONEILL = {"source": "O'Neill's Music of Ireland", "region": "Ireland"}
_SOURCES = [
    ("ryansMammoth", 220, {"source": "Ryan's Mammoth Collection"}),
    ("oneills1850/0550-0625.abc", 30, _ONEILL),
    ("oneills1850/0759-0810.abc", 30, _ONEILL),
    ("oneills1850/1176-1275.abc", 30, _ONEILL),
    ("oneills1850/1556-1624.abc", 25, _ONEILL),
    ("oneills1850/1136-1175.abc", 20, _ONEILL),
    ("airdsAirs/book1.abc", 30, {"source": "Aird's Airs", "region": "Scotland", "form": "air"}),
    ("miscFolk/americanfifeopus.abc", 25, {"source": "American fife tunes",
                                           "region": "the United States", "form": "fife tune"}),
    ("essenFolksong/kinder0.abc", 30, {"source": "Essen Folksong Collection",
                                       "form": "children's song"}),
    ("essenFolksong/erk10.abc", 25, {"source": "Essen Folksong Collection", "form": "folk song"}),
    ("essenFolksong/lux.abc", 25, {"source": "Essen Folksong Collection", "form": "folk song"}),
    ("essenFolksong/irl.abc", 25, {"source": "Essen Folksong Collection", "form": "folk song"}),
    ("essenFolksong/han1.abc", 30, {"source": "Essen Folksong Collection", "form": "folk song"}),
    ("bach", 40, {"source": "Bach chorales", "composer": "Johann Sebastian Bach",
                  "region": "Germany", "form": "chorale"}),
]

# English names for the Essen collection's German region and genre words.
_REGIONS = {"deutschland": "Germany", "luxemburg": "Luxembourg", "irland": "Ireland",
            "china": "China", "lothringen": "Lorraine", "schweiz": "Switzerland",
            "oesterreich": "Austria", "niederlande": "the Netherlands"}
_FORMS = [("wiegen", "lullaby"), ("kinder", "children's song"), ("tanz", "dance song"),
          ("liebe", "love song"), ("ballade", "ballad"), ("xiaodiao", "xiaodiao ditty"),
          ("shange", "shan'ge mountain song"), ("haozi", "work song"), ("reel", "reel"),
          ("slip", "slip jig"), ("jig", "jig"), ("hornpipe", "hornpipe"),
          ("strathspey", "strathspey"), ("fling", "highland fling"), ("clog", "clog dance"),
          ("waltz", "waltz"), ("polka", "polka"), ("march", "march"),
          ("schottische", "schottische"),
          ("quadrille", "quadrille"), ("set dance", "set dance"), ("air", "air")]


_NOT_COMPOSER = r"\d|trad|anon|scotch|irish|scottish|english|german|arr\."


def _abc_headers(path):
    """Header fields (T, C, R, O) of every tune of an ABC file, keyed by its X: number."""
    headers, current = {}, None
    with open(path, encoding="latin-1") as f:
        for line in f:
            m = re.match(r"^([XTCRO]):\s*(.*?)\]?\s*$", line)
            if not m:
                continue
            field, value = m.groups()
            if field == "X":
                current = headers.setdefault(value.strip(), {})
            elif current is not None:
                current.setdefault(field, value.strip())
    return headers


def _english_form(*texts):
    """The first known form word in texts, in English, or ''."""
    for text in texts:
        low = (text or "").lower()
        for word, form in _FORMS:
            if word in low:
                return form
    return ""


def _english_region(origin):
    """An Essen 'O:' field such as 'Europa, Mitteleuropa, Deutschland' -> 'Germany'."""
    for part in reversed([p.strip().lower() for p in re.split(r"[,;/]", origin or "")]):
        if part in _REGIONS:
            return _REGIONS[part]
    return ""


def _clean_title(title):
    """'7th Regiment -- Reel' -> '7th Regiment'; 'Der Mai, S. 52' -> 'Der Mai'; no ALL CAPS."""
    title = re.sub(r"\s*--.*$", "", (title or "").strip())
    title = re.sub(r",?\s*S\.\s*\d+\s*$", "", title).strip(" .,")
    return title.title() if title.isupper() else title


def _score_notes(score):
    """Melody of a parsed score: list of [onset, duration, midi] in TICKS per quarter note."""
    parts = list(score.parts)
    part = next((p for p in parts if (p.partName or "").lower() == "soprano"), None)
    part = part or (parts[0] if parts else score)
    notes = []
    for n in part.flatten().stripTies().notes:
        pitches = getattr(n, "pitches", ())
        if not pitches or n.quarterLength <= 0 or type(n).__name__ == "ChordSymbol":
            continue
        onset = int(round(float(n.offset) * TICKS))
        if onset >= MAX_QUARTERS * TICKS:
            break
        midi = max(p.midi for p in pitches)
        notes.append([onset, max(1, int(round(float(n.quarterLength) * TICKS))), midi])
    return notes


def _beat_ticks(score, notes):
    """The tune's pulse in ticks: the meter's beat, halved or doubled to ~2 notes per beat."""
    ts = next(iter(score.recurse().getElementsByClass("TimeSignature")), None)
    beat = float(ts.beatDuration.quarterLength) if ts else 1.0
    span = notes[-1][0] + notes[-1][1] - notes[0][0]
    quarters_per_note = span / TICKS / len(notes)
    candidates = [beat * 2.0 ** k for k in range(-2, 3)]
    best = min(candidates, key=lambda b: abs(np.log2(b / quarters_per_note / 2.0)))
    return max(1, int(round(best * TICKS)))


def _tune_record(score, defaults, header, tune_id):
    """One asset record, or None when the tune is too short or its metadata uses the vocabulary."""
    from music21 import key as m21key   # here: slow to import, and only `data.py tunes` needs it

    notes = _score_notes(score)
    if len(notes) < 16:
        return None
    first = notes[0][0]
    notes = [[o - first, d, m] for o, d, m in notes]
    k = next(iter(score.recurse().getElementsByClass(m21key.Key)), None) or score.analyze("key")
    md = score.metadata
    title = _clean_title(header.get("T") or (md.title if md else ""))
    if not title and tune_id.startswith("bach/"):
        title = "Chorale " + tune_id.split("/")[1].upper().replace("BWV", "BWV ")
    ts = next(iter(score.recurse().getElementsByClass("TimeSignature")), None)
    bar = int(round(float(ts.barDuration.quarterLength) * TICKS)) if ts else 4 * TICKS
    record = dict(defaults)
    record.update({"id": tune_id, "title": title, "tonic": k.tonic.pitchClass,
                   "source_mode": k.mode, "beat": _beat_ticks(score, notes), "bar": bar,
                   "notes": [v for n in notes for v in n]})
    composer = header.get("C") or (md.composer if md else None)
    if composer and "composer" not in defaults and not re.search(_NOT_COMPOSER, composer, re.I):
        record["composer"] = composer.strip(" .").title()
    form = _english_form(header.get("R"), header.get("T"))
    if form:
        record["form"] = form
    region = _english_region(header.get("O"))
    if region:
        record["region"] = region
    text = " ".join(str(record.get(f, "")) for f in ("title", "composer", "form", "region"))
    if not title or _VOCAB_RE.search(text):
        return None
    return record


def _iter_scores(spec, count):
    """(score, header, id) for up to `count` tunes of one corpus entry of _SOURCES."""
    from music21 import converter, corpus   # here: slow to import, and only `data.py tunes` needs it

    root = os.path.dirname(corpus.getPaths()[0]).split("/corpus/")[0] + "/corpus/"
    if spec in ("ryansMammoth", "bach"):
        paths = sorted(str(p) for p in corpus.getPaths() if f"/{spec}/" in str(p))
        if spec == "bach":
            paths = [p for p in paths if re.search(r"bwv\d+\.\d+\.mxl$", p)]
        paths = paths[:: max(1, len(paths) // (count * 2))]
        for path in paths:
            header = _abc_headers(path).get("1", {}) if path.endswith(".abc") else {}
            yield converter.parse(path), header, f"{spec}/{os.path.basename(path).split('.')[0]}"
        return
    path = root + spec
    headers = _abc_headers(path)
    opus = converter.parse(path)
    scores = list(opus.scores)
    for score in scores[:: max(1, len(scores) // (count * 2))]:
        number = str(score.metadata.number) if score.metadata else ""
        yield score, headers.get(number, {}), f"{spec.split('.')[0]}/{number}"


def build_tune_asset(out=TUNES_PATH):
    """Parse the chosen music21 corpus tunes into a compact JSON list (a minute or two)."""
    tunes = []
    for spec, count, defaults in _SOURCES:
        kept = 0
        for score, header, tune_id in _iter_scores(spec, count):
            try:
                record = _tune_record(score, defaults, header, tune_id)
            except Exception as e:  # a score music21 parses oddly is skipped, not fatal
                print(f"skipped {tune_id}: {e}", file=sys.stderr)
                record = None
            if record:
                tunes.append(record)
                kept += 1
            if kept == count:
                break
        print(f"{spec}: {kept} tunes", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in tunes) + "\n]\n")
    print(f"wrote {len(tunes)} tunes to {out}", file=sys.stderr)


def load_tunes(path=TUNES_PATH):
    """The parsed tunes: a list of dicts (see `_tune_record`), `notes` as an [N x 3] int array."""
    with open(path, encoding="utf-8") as f:
        tunes = json.load(f)
    for tune in tunes:
        tune["notes"] = np.asarray(tune["notes"], dtype=np.int64).reshape(-1, 3)
    return tunes


# ----------------------------------------------------------------------------------------------
# Attributes of a clip, and the arrangement that makes them true

INSTRUMENTS = ("piano", "guitar", "organ", "flute", "bass")
REGISTERS = {"bass": (28, 52), "flute": (72, 88), "piano": (55, 79), "guitar": (55, 79),
             "organ": (55, 79)}
REGISTER_NAMES = {"bass": "low", "flute": "high", "piano": "middle", "guitar": "middle",
                  "organ": "middle"}
TEMPO_RANGES = {"slow": (60, 80), "medium": (95, 125), "fast": (140, 180)}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor
# Scale degree (0-6) of each pitch class above the tonic, for re-moding: chromatic notes go to
# the degree below them, so 3 (minor third) and 4 (major third) both become the third.
_DEGREE = (0, 0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6)
KEY_NAMES = {"major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
             "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")}
DRUM_PROBABILITY = 0.4
DRUM_LEVEL = 0.8  # drum kit RMS relative to the pitched instruments' RMS
CHORD_PROBABILITY = 0.5


def draw_attributes(rng, tune, seconds, tempo=None, instrument=None, mode=None, drums=None):
    """Random true attributes of one clip; any of tempo ("slow", "medium", "fast"), instrument,
    mode and drums can be fixed instead (the same random numbers are drawn either way)."""
    drawn_tempo = str(rng.choice(("slow", "medium", "fast")))
    tempo = tempo or drawn_tempo
    lo, hi = TEMPO_RANGES[tempo]
    bpm = lo + int(rng.integers(hi - lo + 1))
    drawn_instrument = str(rng.choice(INSTRUMENTS))
    instrument = instrument or drawn_instrument
    drawn_mode = str(rng.choice(("major", "minor")))
    mode = mode or drawn_mode
    tonic = int(rng.integers(12))
    drawn_drums = bool(rng.random() < DRUM_PROBABILITY)
    drums = drawn_drums if drums is None else bool(drums)
    chords = bool(instrument in ("piano", "guitar", "organ") and rng.random() < CHORD_PROBABILITY)
    return {"tempo": None if tempo == "medium" else tempo, "bpm": bpm,
            "instrument": instrument, "register": REGISTER_NAMES[instrument], "mode": mode,
            "key": f"{KEY_NAMES[mode][tonic]} {mode}", "tonic": tonic, "drums": drums,
            "chords": chords, "tune": tune["id"], "seconds": float(seconds)}


def remode(midi, source_tonic, mode):
    """Snap MIDI notes onto the major or natural-minor scale on the tune's tonic."""
    rel = (midi - source_tonic) % 12
    scale = np.asarray(SCALES[mode])
    return midi - rel + scale[np.asarray(_DEGREE)[rel]]


def place_in_register(midi, shift, register):
    """Transpose by `shift` (mod 12 fixed, octave chosen to centre the median), fold into range."""
    lo, hi = register
    midi = midi + shift
    centre = (lo + hi) / 2.0
    midi = midi + 12 * int(round((centre - np.median(midi)) / 12.0))
    while (midi < lo).any() or (midi > hi).any():
        midi = np.where(midi < lo, midi + 12, np.where(midi > hi, midi - 12, midi))
    return midi


def tune_window(tune, start_tick, n_ticks):
    """Notes [N x 3] (ticks) from start_tick for n_ticks, looping the tune as often as needed."""
    notes = tune["notes"]
    length = int(notes[-1, 0] + notes[-1, 1])
    length = -(-length // tune["bar"]) * tune["bar"]  # up to a whole bar
    pieces, offset = [], -start_tick
    while offset < n_ticks:
        shifted = notes + np.array([offset, 0, 0])
        pieces.append(shifted[(shifted[:, 0] >= 0) & (shifted[:, 0] < n_ticks)])
        offset += length
    window = np.concatenate(pieces)
    window[:, 1] = np.minimum(window[:, 1], n_ticks - window[:, 0])
    return window


def arrange(tune, attrs, rng):
    """Melody notes of a clip: a list of (onset s, duration s, midi), and the seconds per tick."""
    sec_per_tick = 60.0 / (attrs["bpm"] * tune["beat"])
    n_ticks = int(np.ceil(attrs["seconds"] / sec_per_tick))
    n_bars = max(1, int(tune["notes"][-1, 0]) // tune["bar"])
    start = tune["bar"] * int(rng.integers(0, max(1, n_bars // 2)))
    notes = tune_window(tune, start, n_ticks)
    midi = remode(notes[:, 2], tune["tonic"], attrs["mode"])
    shift = (attrs["tonic"] - tune["tonic"]) % 12
    midi = place_in_register(midi, shift, REGISTERS[attrs["instrument"]])
    melody = [(o * sec_per_tick, d * sec_per_tick, int(m))
              for (o, d, _), m in zip(notes.tolist(), midi.tolist())]
    return melody, sec_per_tick


def chord_track(melody, attrs, bar_seconds):
    """One diatonic triad per bar, the one sharing most sounding time with the bar's melody."""
    scale = np.asarray(SCALES[attrs["mode"]])
    chords = []
    for bar_start in np.arange(0.0, attrs["seconds"], bar_seconds):
        weight = np.zeros(12)
        for onset, dur, midi in melody:
            overlap = min(onset + dur, bar_start + bar_seconds) - max(onset, bar_start)
            if overlap > 0:
                weight[(midi - attrs["tonic"]) % 12] += overlap
        best, best_score = 0, -1.0
        for degree in (0, 3, 4, 5):  # I, IV, V, vi (major); i, iv, v, VI (minor)
            pcs = scale[[(degree + k) % 7 for k in (0, 2, 4)]]
            score = weight[pcs].sum() + (0.01 if degree == 0 else 0.0)
            if score > best_score:
                best, best_score = degree, score
        root = 48 + (attrs["tonic"] + scale[best]) % 12  # C3..B3
        notes = [root + (scale[(best + k) % 7] - scale[best]) % 12 for k in (0, 2, 4)]
        chords.append((float(bar_start), float(bar_seconds), [int(n) for n in notes]))
    return chords


# ----------------------------------------------------------------------------------------------
# The synthesizer: additive instruments and a sampled drum kit, in numpy

# Per instrument: harmonic amplitudes a_h, decay rates (1/s) d_h = d0 + d1 h, attack and release
# (s), inharmonicity B (f_h = h f0 sqrt(1 + B h^2)), vibrato depth (fraction of f0, at 5 Hz).
_INSTRUMENT_SOUND = {
    "piano": dict(amps=[1 / h ** 1.3 for h in range(1, 13)], d0=1.5, d1=0.6, attack=0.004,
                  release=0.05, inharm=2e-4, vibrato=0.0),
    "guitar": dict(amps=[abs(np.sin(np.pi * h * 0.18)) / h for h in range(1, 13)], d0=2.5,
                   d1=1.0, attack=0.002, release=0.04, inharm=5e-5, vibrato=0.0),
    "organ": dict(amps=[1.0, 0.7, 0.45, 0.35, 0, 0.2, 0, 0.12], d0=0.0, d1=0.0, attack=0.012,
                  release=0.03, inharm=0.0, vibrato=0.0),
    "flute": dict(amps=[1.0, 0.4, 0.18, 0.08], d0=0.0, d1=0.0, attack=0.03, release=0.04,
                  inharm=0.0, vibrato=0.004),
    "bass": dict(amps=[np.exp(-h / 5.0) / h ** 0.7 for h in range(1, 13)], d0=1.2, d1=0.5,
                 attack=0.004, release=0.04, inharm=0.0, vibrato=0.0),
}
_NOTE_CACHE = {}


def render_note(instrument, midi, seconds, sample_rate):
    """One note, attack to end of release: a float32 array (cached)."""
    key = (instrument, midi, round(seconds, 3), sample_rate)
    if key in _NOTE_CACHE:
        return _NOTE_CACHE[key]
    p = _INSTRUMENT_SOUND[instrument]
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12.0)
    n = int((seconds + p["release"]) * sample_rate)
    t = np.arange(n) / sample_rate
    phase = 2 * np.pi * f0 * t
    if p["vibrato"]:
        phase = phase + p["vibrato"] * f0 / 5.0 * (1 - np.cos(2 * np.pi * 5.0 * t))
    wave = np.zeros(n)
    for h, amp in enumerate(p["amps"], start=1):
        ratio = h * np.sqrt(1 + p["inharm"] * h * h)
        if amp == 0 or ratio * f0 > 0.45 * sample_rate:
            continue
        decay = np.exp(-(p["d0"] + p["d1"] * h) * t) if p["d0"] or p["d1"] else 1.0
        wave += amp * decay * np.sin(ratio * phase)
    envelope = np.minimum(1.0, t / p["attack"])
    envelope *= np.clip((seconds + p["release"] - t) / p["release"], 0.0, 1.0)
    wave = (wave * envelope / sum(p["amps"])).astype(np.float32)
    if len(_NOTE_CACHE) > 4000:
        _NOTE_CACHE.clear()
    _NOTE_CACHE[key] = wave
    return wave


_DRUM_CACHE = {}


def drum_sounds(sample_rate):
    """Kick (pitch-swept sine), snare (noise and a 190 Hz body) and closed hi-hat (bright noise)."""
    if sample_rate in _DRUM_CACHE:
        return _DRUM_CACHE[sample_rate]
    noise = np.random.default_rng(1234).standard_normal(int(0.25 * sample_rate))
    t = np.arange(len(noise)) / sample_rate
    kick = np.sin(2 * np.pi * (45 * t + 75 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.09)
    snare = 0.6 * noise * np.exp(-t / 0.05) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)
    hat = np.diff(noise, prepend=0.0) * np.exp(-t / 0.012) * 0.5
    _DRUM_CACHE[sample_rate] = {"kick": kick.astype(np.float32), "snare": snare.astype(np.float32),
                                "hat": hat.astype(np.float32)}
    return _DRUM_CACHE[sample_rate]


def drum_track(beat_seconds, subdivision, seconds, sample_rate):
    """Kick on beats 1 and 3, snare on 2 and 4, hi-hat on every subdivision, for the whole clip."""
    sounds = drum_sounds(sample_rate)
    hits = []
    for beat, start in enumerate(np.arange(0.0, seconds, beat_seconds)):
        hits.append((start, "kick" if beat % 2 == 0 else "snare", 0.9 if beat % 2 == 0 else 0.7))
        for k in range(subdivision):
            hits.append((start + k * beat_seconds / subdivision, "hat", 0.35))
    return hits, sounds


def _add(track, sound, start, gain):
    """Mix `sound` into `track` at sample `start`, cut at the track's end."""
    end = min(len(track), start + len(sound))
    if end > start:
        track[start:end] += gain * sound[:end - start]


def render_parts(tune, attrs, rng, sample_rate=SAMPLE_RATE, split_kit=False):
    """(instrument, kit, melody): the instrument's track (melody and chords), float32 [T], and the
    drum kit's tracks, unscaled: {"drums": the whole kit} or, with split_kit, {"kick", "snare",
    "hat"} apart (for panning); {} without drums."""
    n = int(round(attrs["seconds"] * sample_rate))
    track = np.zeros(n + sample_rate, dtype=np.float32)  # a second of slack for release tails
    melody, sec_per_tick = arrange(tune, attrs, rng)
    for onset, dur, midi in melody:
        velocity = 0.75 + 0.25 * rng.random()
        note = render_note(attrs["instrument"], midi, dur, sample_rate)
        _add(track, note, int(round(onset * sample_rate)), velocity)
    if attrs["chords"]:
        strum = 0.015 if attrs["instrument"] == "guitar" else 0.0
        for onset, dur, notes in chord_track(melody, attrs, tune["bar"] * sec_per_tick):
            for k, midi in enumerate(notes):
                note = render_note(attrs["instrument"], midi, dur, sample_rate)
                _add(track, note, int(round((onset + k * strum) * sample_rate)), 0.3)
    kit = {}
    if attrs["drums"]:
        beat = tune["beat"]
        subdivision = 3 if beat % 9 == 0 else 2  # dotted beats (9, 18, 36 ticks) split in three
        hits, sounds = drum_track(beat * sec_per_tick, subdivision, attrs["seconds"], sample_rate)
        for start, name, gain in hits:
            part = kit.setdefault(name if split_kit else "drums", np.zeros(n + sample_rate, dtype=np.float32))
            _add(part, sounds[name], int(round(start * sample_rate)), gain)
        kit = {name: part[:n] for name, part in kit.items()}
    return track[:n], kit, melody


def render_clip(tune, attrs, rng, sample_rate=SAMPLE_RATE):
    """The audio of one clip (float32, peak <= 0.95) and its melody notes."""
    audio, kit, melody = render_parts(tune, attrs, rng, sample_rate)
    if kit:
        drums = kit["drums"]
        audio += DRUM_LEVEL * _rms(audio) / _rms(drums) * drums
    audio[-int(0.02 * sample_rate):] *= np.linspace(1.0, 0.0, int(0.02 * sample_rate))
    audio *= min(0.1 / _rms(audio), 0.95 / (np.abs(audio).max() + 1e-9))  # -20 dBFS, peak <= .95
    return audio, melody


# Stereo (an extension: the paper's audio is mono). Every instrument stands at its own place on a
# stage, the same in every clip up to a small jitter, so that a model given the mono mix-down can
# tell from the timbre where a sound belongs; the drum kit is spread around the middle.
STEREO_PANS = {"flute": -0.9, "piano": -0.4, "bass": 0.0, "organ": 0.35, "guitar": 0.8}
DRUM_PANS = {"kick": 0.0, "snare": 0.2, "hat": -0.5}
PAN_JITTER = 0.1        # each clip's positions move by U(-0.1, 0.1) (one draw for the kit)
ROOM_LEVEL = 0.18       # RMS of the room's sound against the dry mid's (-15 dB)
ROOM_SECONDS = 0.25     # length of the room's impulse response


def pan_gains(pan):
    """Constant-power pan law: (g_L, g_R) = (cos, sin) of (pan + 1) pi / 4, pan in [-1, 1] (left to right)."""
    theta = (pan + 1.0) * np.pi / 4.0
    return float(np.cos(theta)), float(np.sin(theta))


def draw_pans(attrs, rng):
    """The clip's pan positions, jittered around STEREO_PANS and DRUM_PANS (manifest attributes)."""
    jitter = lambda: float(rng.uniform(-PAN_JITTER, PAN_JITTER))
    pans = {"pan": round(float(np.clip(STEREO_PANS[attrs["instrument"]] + jitter(), -1, 1)), 3)}
    kit = jitter()
    if attrs["drums"]:
        pans["drum_pans"] = {k: round(float(np.clip(v + kit, -1, 1)), 3) for k, v in DRUM_PANS.items()}
    return pans


def room_responses(rng, sample_rate):
    """Two decorrelated impulse responses (L, R) of a small room: six early reflections at 5-40 ms
    of random sign, then a diffuse tail of noise decaying with a 60 ms time constant; each scaled to
    unit energy (ROOM_LEVEL sets the level)."""
    n = int(ROOM_SECONDS * sample_rate)
    t = np.arange(n) / sample_rate
    out = []
    for _ in range(2):
        h = 0.5 * rng.standard_normal(n) * np.exp(-t / 0.06) * (t > 0.02)
        for delay, gain in zip(rng.uniform(0.005, 0.04, 6), rng.uniform(0.3, 1.0, 6)):
            h[int(delay * sample_rate)] += gain * rng.choice((-1.0, 1.0))
        out.append(h / np.sqrt(np.sum(h ** 2)))
    return out


def render_stereo(tune, attrs, rng, space_rng, sample_rate=SAMPLE_RATE):
    """A stereo clip: ((2, T) float32 L/R, melody, pans). The instrument and each drum at their pan
    positions (constant power), plus a little room: the dry mid (L + R) / 2 through two
    decorrelated impulse responses, one per channel. The mid has an RMS of 0.1 (as a mono clip),
    both channels a peak <= 0.95. `rng` draws what a mono clip draws (the same notes and captions);
    `space_rng` the pans and the room."""
    from scipy.signal import fftconvolve
    instrument, kit, melody = render_parts(tune, attrs, rng, sample_rate, split_kit=True)
    pans = draw_pans(attrs, space_rng)
    stereo = np.outer(pan_gains(pans["pan"]), instrument)                          # (2, T)
    if kit:
        scale = DRUM_LEVEL * _rms(instrument) / _rms(sum(kit.values()))
        for name, track in kit.items():
            stereo += scale * np.outer(pan_gains(pans["drum_pans"][name]), track)
    n = stereo.shape[1]
    mid = stereo.mean(axis=0)
    room = np.stack([fftconvolve(mid, h)[:n] for h in room_responses(space_rng, sample_rate)])
    stereo += ROOM_LEVEL * _rms(mid) / max(_rms(room), 1e-9) * room
    stereo[:, -int(0.02 * sample_rate):] *= np.linspace(1.0, 0.0, int(0.02 * sample_rate))
    stereo *= min(0.1 / _rms(stereo.mean(axis=0)), 0.95 / (np.abs(stereo).max() + 1e-9))
    return stereo.astype(np.float32), melody, pans


def _rms(x):
    """Root mean square, never zero."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9


# ----------------------------------------------------------------------------------------------
# Captions: long sentences (LaMDA-LF-like), short tags (Rater-SF-like), metadata (section 3.6)

_TEMPO_ADJ = {"slow": ["slow", "slow-paced", "slow, unhurried", "slow and stately"],
              "fast": ["fast", "fast-paced", "fast, driving", "brisk, fast"],
              None: ["mid-tempo", "moderate-tempo", "steady", "easy-going"]}
_TEMPO_PHRASE = {"slow": ["at a slow tempo", "at a slow {bpm} BPM", "with a slow pulse"],
                 "fast": ["at a fast tempo", "at a fast {bpm} BPM", "with a fast, lively pulse"],
                 None: ["at a moderate tempo", "at around {bpm} BPM", "at a walking pace"]}
_INSTRUMENT_NP = {
    "piano": ["a piano", "a grand piano", "an upright piano", "a bright acoustic piano"],
    "guitar": ["an acoustic guitar", "a nylon-string guitar", "a plucked guitar",
               "a classical guitar"],
    "organ": ["an organ", "a church organ", "a drawbar organ", "a reedy electric organ"],
    "flute": ["a flute", "a wooden flute", "a concert flute", "a soft, airy flute"],
    "bass": ["an electric bass", "a deep electric bass", "a fretless bass", "a round-toned bass"],
}
_MOODS = {"major": ["cheerful", "bright", "joyful", "uplifting", "sunny", "carefree"],
          "minor": ["melancholic", "wistful", "mournful", "brooding", "somber", "plaintive"]}
_MODE_PHRASE = {"major": ["in a major key", "in {key}", "in a bright major key"],
                "minor": ["in a minor key", "in {key}", "in a dark minor key"]}
_PERCUSSION = {True: [", with drums", ", over a steady beat of drums",
                      ", backed by drums (kick, snare and hi-hat)",
                      ", with a drum kit keeping time"],
               False: ["", "", ", played solo", ", solo and without percussion",
                       ", with no percussion"]}
_CHORDS = {"piano": [" with left-hand chords", " over simple chords"],
           "guitar": [" with strummed chords", " over simple chords"],
           "organ": [" with sustained chords", " over held chords"]}

_TEMPLATES = [
    "A {mood}, {tempo_adj} {form} played on {inst}{chords}{perc}, {mode_phrase}.",
    "{Inst} plays a {tempo_adj} {form}{origin} {mode_phrase}{chords}{perc}.",
    "This {mood} {form}{origin} is performed on {inst} {tempo_phrase}{perc}; it is {mode_phrase}.",
    "\"{title}\", a {form}{origin}, arranged for {inst_bare}{chords} {tempo_phrase}, "
    "{mode_phrase}{perc}.",
    "{Tempo_adj} and {mood}, this {mode}-key {form} features {inst}{chords}{perc}.",
    "A {inst_bare} rendition of a traditional {form}{origin}, {tempo_phrase}, {mode_phrase}{perc}.",
    "{Inst} carries a {mood} melody {tempo_phrase}{perc}, {mode_phrase}.",
    "An instrumental {form} with a {mood} mood: {inst}{chords}{perc}, {tempo_phrase}, "
    "{mode_phrase}.",
    "The melody of \"{title}\" on {inst}, {tempo_adj} and {mood}, {mode_phrase}{perc}.",
    "Listen to {inst} playing {a_tempo_adj}, {mode}-key tune{origin}{chords}{perc}.",
]
_COMPOSER_TEMPLATE = "A {form} by {composer}, played {tempo_phrase} on {inst}{perc}, {mode_phrase}."

_GENRES = {"Ireland": "irish folk", "Scotland": "scottish folk", "Germany": "german folk song",
           "China": "chinese folk song", "Luxembourg": "european folk song",
           "the United States": "american folk"}
_TEMPO_TAGS = {"slow": ["slow", "slow tempo", "slow-paced"], "fast": ["fast", "fast tempo",
               "fast-paced"], None: ["mid-tempo", "moderate tempo"]}
_REGISTER_TAGS = {"low": "low register", "middle": "mid register", "high": "high register"}


def _choice(rng, options):
    """One of options (a list), drawn with a numpy Generator."""
    return options[int(rng.integers(len(options)))]


def _slots(tune, attrs, rng):
    """Phrases for the caption templates; vocabulary words appear only where they are true."""
    inst = _choice(rng, _INSTRUMENT_NP[attrs["instrument"]])
    tempo_adj = _choice(rng, _TEMPO_ADJ[attrs["tempo"]])
    chords = _choice(rng, _CHORDS[attrs["instrument"]]) if attrs["chords"] else ""
    slots = {
        "inst": inst, "Inst": inst[0].upper() + inst[1:], "inst_bare": inst.split(" ", 1)[1],
        "tempo_adj": tempo_adj, "Tempo_adj": tempo_adj[0].upper() + tempo_adj[1:],
        "a_tempo_adj": ("an " if tempo_adj[0] in "aeiou" else "a ") + tempo_adj,
        "tempo_phrase": _choice(rng, _TEMPO_PHRASE[attrs["tempo"]]).format(bpm=attrs["bpm"]),
        "mood": _choice(rng, _MOODS[attrs["mode"]]), "mode": attrs["mode"],
        "mode_phrase": _choice(rng, _MODE_PHRASE[attrs["mode"]]).format(key=attrs["key"]),
        "perc": _choice(rng, _PERCUSSION[attrs["drums"]]), "chords": chords,
        "form": tune.get("form") or "tune", "title": tune["title"],
        "origin": f" from {tune['region']}" if tune.get("region") else "",
        "composer": tune.get("composer", ""),
    }
    return slots


def long_captions(tune, attrs, rng, count=3):
    """`count` long-form sentences from distinct templates, each with fresh synonyms."""
    templates = list(_TEMPLATES) + ([_COMPOSER_TEMPLATE] if tune.get("composer") else [])
    picks = rng.choice(len(templates), size=count, replace=False)
    return [templates[int(k)].format(**_slots(tune, attrs, rng)) for k in picks]


def short_tags(tune, attrs, rng):
    """Rater-SF-like tags: tempo, instrument, mode, mood, percussion, register, form, genre."""
    drums = ["drums", "drum kit", "steady beat"] if attrs["drums"] else []
    if not attrs["drums"] and rng.random() < 0.5:
        drums = [_choice(rng, [f"solo {attrs['instrument']}", "solo", "no percussion"])]
    tags = [_choice(rng, _TEMPO_TAGS[attrs["tempo"]]), attrs["instrument"],
            f"{attrs['mode']} key", _choice(rng, _MOODS[attrs["mode"]]),
            _REGISTER_TAGS[attrs["register"]], "instrumental"] + drums[:2]
    if attrs["chords"]:
        tags.append("chords")
    if tune.get("form"):
        tags.append(tune["form"])
    if tune.get("region") in _GENRES:
        tags.append(_GENRES[tune["region"]])
    return [tags[int(k)] for k in rng.permutation(len(tags))]


def metadata(tune, attrs):
    """The named-entity tags of section 3.6: title, composer, form, region, key, source."""
    fields = {"title": tune["title"], "composer": tune.get("composer"), "form": tune.get("form"),
              "region": tune.get("region"), "key": attrs["key"], "source": tune.get("source")}
    return {k: v for k, v in fields.items() if v}


# Held-out phrasings for evaluation prompts: templates and synonyms the training captions never use.
_HELDOUT_TEMPLATES = [
    "I'd like to hear a {tempo} tune on the {inst}, {mode} tonality{perc}.",
    "{Inst}, {tempo}, {mode} key{perc}.",
    "Play something {tempo} and {mood} on the {inst}, in {mode}{perc}.",
    "Compose a {mode} melody for {inst}{perc}, {tempo_clause}.",
]
_HELDOUT_TEMPO = {"slow": ["slow", "really slow"], "fast": ["fast", "very fast"],
                  None: ["medium-paced", "unhurried yet steady"]}
_HELDOUT_TEMPO_CLAUSE = {"slow": "kept slow", "fast": "kept fast", None: "at a medium pace"}
_HELDOUT_MOODS = {"major": ["festive", "happy-go-lucky"], "minor": ["gloomy", "tearful"]}
_HELDOUT_PERC = {True: [" with drums backing it", " with a full set of drums"],
                 False: [", all solo", ", unaccompanied", ""]}


def heldout_captions(rng, repeats=2):
    """Every combination of tempo x instrument x mode x drums, `repeats` phrasings each."""
    lines = []
    for tempo in ("slow", None, "fast"):
        for instrument in INSTRUMENTS:
            for mode in ("major", "minor"):
                for drums in (False, True):
                    for k in rng.choice(len(_HELDOUT_TEMPLATES), size=repeats, replace=False):
                        perc = _choice(rng, _HELDOUT_PERC[drums])
                        caption = _HELDOUT_TEMPLATES[int(k)].format(
                            tempo=_choice(rng, _HELDOUT_TEMPO[tempo]), inst=instrument,
                            Inst=instrument.capitalize(), mode=mode, perc=perc,
                            mood=_choice(rng, _HELDOUT_MOODS[mode]),
                            tempo_clause=_HELDOUT_TEMPO_CLAUSE[tempo])
                        lines.append({"caption": caption, "attributes": {
                            "tempo": tempo, "instrument": instrument, "mode": mode,
                            "drums": drums}})
    return lines


def vocabulary_violations(texts, attrs):
    """Vocabulary words (this module's docstring) used in texts although the clip does not have them."""
    true = {attrs["tempo"], attrs["instrument"], attrs["mode"]} - {None}
    true |= {"drums", "drum"} if attrs["drums"] else {"solo"}
    return sorted({w.lower() for text in texts for w in _VOCAB_RE.findall(text)} - true)


# ----------------------------------------------------------------------------------------------
# Writing the corpus

@dataclass
class ToyConfig:
    """Size and seed of a synthesized corpus; the CLI's flags are these fields."""
    clips: int = 2000       # captioned clips in DIR/manifest.jsonl
    unlabeled: int = -1     # clips in DIR/unlabeled/manifest.jsonl; -1: clips // 5
    seconds: float = 4.0    # clip length: 4 s at toy scale, 30 s (section 3.6) at full scale
    seed: int = 0           # the same seed writes the same bytes
    sample_rate: int = SAMPLE_RATE
    workers: int = 1        # processes synthesizing in parallel
    audio_format: str = "flac"  # "flac" (lossless, ~5x smaller) or "wav"; both 16-bit PCM
    stereo: bool = False    # two-channel clips (render_stereo), pans in the attributes


PRESETS = {"toy": {"seconds": 4.0}, "full": {"seconds": 30.0}}
_HELP = {"clips": "captioned clips (default 2000)",
         "unlabeled": "unlabeled clips for pseudo-labelling (default: clips // 5)",
         "seconds": "clip length in seconds (default 4 at --scale toy, 30 at full)",
         "seed": "random seed (default 0)", "sample_rate": "audio rate in Hz (default 24000)",
         "workers": "parallel processes (default 1)",
         "audio_format": "flac (default, ~5x smaller) or wav; both 16-bit PCM",
         "stereo": "two-channel clips: instruments and drums panned, a little room; pans in the manifest"}
_CHOICES = {"audio_format": ("flac", "wav")}


def make_clip(index, labeled, config, tunes, out_dir):
    """Synthesize clip `index`, write its WAV under out_dir/audio, return its manifest entry."""
    rng = np.random.default_rng([config.seed, int(labeled), index])
    tune = tunes[int(rng.integers(len(tunes)))]
    attrs = draw_attributes(rng, tune, config.seconds)
    if config.stereo:
        space_rng = np.random.default_rng([config.seed, int(labeled), index, 2])
        audio, melody, pans = render_stereo(tune, attrs, rng, space_rng, config.sample_rate)
        attrs.update(pans, channels=2)
        audio = audio.T                                  # (T, 2) for soundfile
    else:
        audio, melody = render_clip(tune, attrs, rng, config.sample_rate)
    midi = [m for _, _, m in melody]
    attrs["note_range"] = [min(midi), max(midi)] if midi else None
    attrs["sample_rate"] = config.sample_rate
    name = f"{'clip' if labeled else 'unlabeled'}_{index:06d}.{config.audio_format}"
    sf.write(os.path.join(out_dir, "audio", name), audio, config.sample_rate, subtype="PCM_16")
    if not labeled:
        return {"audio": f"../audio/{name}", "captions": [], "attributes": attrs}
    return {"audio": f"audio/{name}", "captions": long_captions(tune, attrs, rng),
            "tags": short_tags(tune, attrs, rng), "metadata": metadata(tune, attrs),
            "attributes": attrs}


_WORKER = {}


def _init_worker(config, tunes_path, out_dir):
    """Pool initializer: each process loads the tunes once."""
    _WORKER.update(config=config, tunes=load_tunes(tunes_path), out_dir=out_dir)


def _work(job):
    """Pool task: one clip."""
    index, labeled = job
    return make_clip(index, labeled, _WORKER["config"], _WORKER["tunes"], _WORKER["out_dir"])


def write_corpus(out_dir, config, tunes_path=TUNES_PATH, progress=True):
    """Write the whole corpus (layout in CLI_DESCRIPTION); return the number of clips written."""
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "unlabeled"), exist_ok=True)
    unlabeled = config.clips // 5 if config.unlabeled < 0 else config.unlabeled
    jobs = [(i, True) for i in range(config.clips)] + [(i, False) for i in range(unlabeled)]
    bar = tqdm(total=len(jobs), desc="toy corpus", unit="clip", disable=not progress)
    if config.workers > 1:
        with multiprocessing.get_context("fork").Pool(
                config.workers, _init_worker, (config, tunes_path, out_dir)) as pool:
            entries = []
            for entry in pool.imap(_work, jobs, chunksize=8):
                entries.append(entry)
                bar.update()
    else:
        _init_worker(config, tunes_path, out_dir)
        entries = []
        for job in jobs:
            entries.append(_work(job))
            bar.update()
    bar.close()
    _write_jsonl(os.path.join(out_dir, "manifest.jsonl"), entries[:config.clips])
    _write_jsonl(os.path.join(out_dir, "unlabeled", "manifest.jsonl"), entries[config.clips:])
    heldout = heldout_captions(np.random.default_rng([config.seed, 2]))
    _write_jsonl(os.path.join(out_dir, "heldout_captions.jsonl"), heldout)
    return len(entries)


def _write_jsonl(path, rows):
    """One JSON object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def add_arguments(parser):
    """`data.py toy` flags, one per ToyConfig field, plus --out, --scale and --tunes."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--scale", choices=sorted(PRESETS), default="toy",
                        help="preset clip length (default toy)")
    for field in fields(ToyConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=_HELP[field.name])
            continue
        parser.add_argument(flag, type=field.type, default=None, help=_HELP[field.name],
                            choices=_CHOICES.get(field.name))
    parser.add_argument("--tunes", default=TUNES_PATH, help="parsed-tune JSON (assets/tunes.json)")
    parser.set_defaults(toy_parser=parser)


def config_from_args(args, parser):
    """A ToyConfig from parsed flags; a bad value is a usage error (exit 2)."""
    values = dict(PRESETS[args.scale])
    values.update({f.name: getattr(args, f.name) for f in fields(ToyConfig)
                   if getattr(args, f.name) is not None})
    config = ToyConfig(**values)
    if config.clips < 0 or config.workers < 1 or config.sample_rate < 3200:
        parser.error("--clips must be >= 0, --workers >= 1 and --sample-rate >= 3200")
    if not 0.5 <= config.seconds <= 600:
        parser.error("--seconds must be between 0.5 and 600")
    return config


def run(args):
    """Write the corpus for parsed `data.py toy` flags; report clips per minute on stderr."""
    parser = args.toy_parser
    config = config_from_args(args, parser)
    if not os.path.exists(args.tunes):
        parser.error(f"tune file {args.tunes} not found (python data.py tunes rebuilds it)")
    start = time.time()
    count = write_corpus(args.out, config, args.tunes)
    minutes = (time.time() - start) / 60.0
    print(f"wrote {count} clips of {config.seconds:g} s to {args.out} in {minutes * 60:.1f} s "
          f"({count / max(minutes, 1e-9):.0f} clips/min)", file=sys.stderr)
