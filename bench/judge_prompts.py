"""Prompt sets for bench/judge.py: every combination of tempo x instrument x drums x mode, phrased
with words and templates that neither the training captions nor toy_corpus's held-out captions use.

Three sets with disjoint templates and synonyms: `tune` (to choose settings on), `eval` (to report
on) and `check` (written after `eval` had been seen under many settings, to report a choice made on
`tune` on prompts that no earlier run has looked at). Each vocabulary word of the combination is
named once (toy_corpus.py's table); the rest of the sentence is paraphrase. No-drum prompts say "solo", as the vocabulary defines it.
"""
import itertools

import numpy as np

TEMPOS = ("slow", "fast")
INSTRUMENTS = ("piano", "guitar", "organ", "flute", "bass")
MODES = ("major", "minor")
DRUMS = (True, False)

_WORDS = {
    "eval": {
        "tempo": {"slow": ["slow", "slow, languid", "gentle, slow", "slow and dreamy"],
                  "fast": ["fast", "quick, fast", "lively, fast", "fast and nimble"]},
        "inst": {"piano": ["piano", "a piano"], "guitar": ["guitar", "a guitar"], "organ": ["organ", "an organ"],
                 "flute": ["flute", "a flute"], "bass": ["bass", "a bass"]},
        "mode": {"major": ["in major", "in a major key", "major-key"], "minor": ["in minor", "in a minor key",
                                                                              "minor-key"]},
        "drums": {True: ["with drums", "with drums pounding along", "drums keeping the groove"],
                  False: ["solo", "played solo", "solo, nothing else"]},
        "templates": ["A {tempo} {mode_adj} melody on {inst_a}, {drums}.",
                      "{Tempo} {inst} music {mode_in}, {drums}.",
                      "Give me a {tempo} song for {inst}, {mode_in}, {drums}.",
                      "{Inst_a} playing something {tempo} {mode_in}, {drums}."],
    },
    "tune": {
        "tempo": {"slow": ["slow", "very slow", "slow, calm"], "fast": ["fast", "very fast", "fast, energetic"]},
        "inst": {"piano": ["piano", "the piano"], "guitar": ["guitar", "the guitar"], "organ": ["organ", "the organ"],
                 "flute": ["flute", "the flute"], "bass": ["bass", "the bass"]},
        "mode": {"major": ["major", "major tonality"], "minor": ["minor", "minor tonality"]},
        "drums": {True: ["with drums", "drums behind it"], False: ["solo", "solo performance"]},
        "templates": ["{Tempo} tune, {inst}, {mode_word}, {drums}.",
                      "Music on {inst_the}: {tempo}, {mode_word}, {drums}.",
                      "Please play a {tempo} {mode_word} piece on {inst_the}, {drums}."],
    },
    "check": {
        "tempo": {"slow": ["slow", "slow and tender", "slow, hushed"],
                  "fast": ["fast", "fast and bouncy", "fast, upbeat"]},
        "inst": {"piano": ["piano", "a piano"], "guitar": ["guitar", "a guitar"], "organ": ["organ", "an organ"],
                 "flute": ["flute", "a flute"], "bass": ["bass", "a bass"]},
        "mode": {"major": ["in major", "major-mode"], "minor": ["in minor", "minor-mode"]},
        "drums": {True: ["with drums", "drums playing along", "drums tapping underneath"],
                  False: ["solo", "as a solo", "alone, solo"]},
        "templates": ["I want {tempo} {inst} music {mode_in}, {drums}.",
                      "Write a {tempo} {mode_adj} tune for {inst_a}, {drums}.",
                      "{Inst_a} {mode_in}, {tempo}, {drums}.",
                      "Something {tempo} on {inst_the} {mode_in}, {drums}."],
    },
}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def prompt_set(name, seed=0):
    """[(prompt, attributes)] for all 2 x 5 x 2 x 2 = 40 combinations, phrased from set `name`."""
    words, rng = _WORDS[name], np.random.default_rng([seed, len(name)])
    out = []
    for tempo, inst, drums, mode in itertools.product(TEMPOS, INSTRUMENTS, DRUMS, MODES):
        t, i = _pick(rng, words["tempo"][tempo]), _pick(rng, words["inst"][inst])
        m = _pick(rng, words["mode"][mode])
        article = "an" if inst[0] in "aeiou" else "a"
        slots = {"tempo": t, "Tempo": t[0].upper() + t[1:], "inst": inst, "Inst": inst.capitalize(),
                 "inst_a": i if " " in i else f"{article} {i}", "inst_the": i if " " in i else f"the {i}",
                 "mode_adj": m if m.endswith(("key", "mode")) else f"{mode}-key",
                 "mode_in": m if m.startswith("in") else f"in {mode}", "mode_word": m,
                 "drums": _pick(rng, words["drums"][drums])}
        slots["Inst_a"] = slots["inst_a"][0].upper() + slots["inst_a"][1:]
        prompt = _pick(rng, words["templates"]).format(**slots)
        out.append((prompt, {"tempo": tempo, "instrument": inst, "drums": drums, "mode": mode}))
    return out
