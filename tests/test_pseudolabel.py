"""pseudolabel.py: the contrastive loss, section 3.5's pipeline (chunked top-K, inverse-frequency
draws, manifest fields), the exported toy T5, the embedding API and the command line."""
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import pseudolabel as pl
import text
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model small enough to build in a blink; the code path is the toy one.
TINY = pl.MulanConfig(embed_dim=16, window_seconds=1.0, audio_channels=(8, 16), token_len=16,
                      t5=dataclasses.asdict(text.T5Config(vocab_size=512, d_model=16, d_kv=4, d_ff=32,
                                                          num_layers=1, num_heads=2,
                                                          feed_forward_proj="gated-gelu")))


@pytest.fixture(scope="module")
def tiny_model():
    spm_bytes = pl.train_sentencepiece(pl.tokenizer_sentences([], helpers.CAPTIONS), 200)
    config = dataclasses.replace(TINY, t5=dict(TINY.t5, vocab_size=text.Tokenizer(spm_bytes).vocab_size))
    torch.manual_seed(0)
    return pl.Mulan(config, spm_bytes).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return helpers.write_tone_manifest(str(tmp_path_factory.mktemp("tones")), n=8)


# ----------------------------------------------------------------------------------------------
# The loss

def test_info_nce_equals_the_direct_symmetric_cross_entropy():
    torch.manual_seed(0)
    a, t = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    loss = pl.info_nce(a, t, torch.tensor(math.log(10.0)))
    logits = (10.0 * a.double() @ t.double().t()).tolist()
    rows = [-math.log(math.exp(r[i]) / sum(math.exp(v) for v in r)) for i, r in enumerate(logits)]
    cols = [-math.log(math.exp(logits[j][j]) / sum(math.exp(logits[i][j]) for i in range(5))) for j in range(5)]
    assert loss.item() == pytest.approx(0.5 * (sum(rows) / 5 + sum(cols) / 5), rel=1e-5)
    assert pl.info_nce(t, a, torch.tensor(math.log(10.0))).item() == pytest.approx(loss.item(), rel=1e-6)
    # matched pairs at the temperature's cap: nearly zero loss; the scale is clamped at 100
    eye = torch.eye(5, 8)
    assert pl.info_nce(eye, eye, torch.tensor(9.0)).item() < 1e-6
    assert pl.info_nce(a, t, torch.tensor(9.0)).item() == pytest.approx(
        pl.info_nce(a, t, torch.tensor(math.log(100.0))).item())


# ----------------------------------------------------------------------------------------------
# Step 4: inverse-frequency draws without replacement

def test_a_caption_in_every_top_k_list_is_drawn_less_often_than_a_rare_one():
    N, K = 300, 4
    top = np.zeros((N, K), dtype=np.int64)              # caption 0 in every list, the rest unique
    top[:, 1:] = 1 + np.arange(N * (K - 1)).reshape(N, K - 1)
    counts = pl.caption_counts(top, int(top.max()) + 1)
    assert counts[0] == N and (counts[1:] == 1).all()
    draws = [pl.sample_inverse_frequency(top, counts, 2, np.random.default_rng(seed)) for seed in range(10)]
    for d in draws:                                      # without replacement
        assert all(len(set(row)) == 2 and set(row) <= set(t) for row, t in zip(d.tolist(), top.tolist()))
    common = np.mean([(d == 0).any(axis=1).mean() for d in draws])
    w = 1.0 / N                                          # exact: first draw, or second after a rare one
    exact = w / (w + 3) + 3 / (w + 3) * w / (w + 2)
    assert common == pytest.approx(exact, abs=0.01) and common < 0.02
    rare = np.mean([(d == top[:, 1:2]).any(axis=1).mean() for d in draws])
    assert rare > 0.6                                    # each rare one: about 2/3
    again = pl.sample_inverse_frequency(top, counts, 2, np.random.default_rng(3))
    assert np.array_equal(again, draws[3]) and not np.array_equal(draws[3], draws[4])


def test_gumbel_top_k_matches_successive_weighted_draws():
    counts = np.array([1, 2, 4, 8])
    top = np.tile(np.arange(4), (40000, 1))
    picks = pl.sample_inverse_frequency(top, counts, 2, np.random.default_rng(0))
    w = 1.0 / counts
    for i, j in itertools.permutations(range(4), 2):    # P(first i, then j)
        exact = w[i] / w.sum() * w[j] / (w.sum() - w[i])
        seen = np.mean((picks[:, 0] == i) & (picks[:, 1] == j))
        assert seen == pytest.approx(exact, abs=0.01)


def test_short_lists_are_padded_and_never_drawn():
    top = np.array([[3, 1, -1, -1], [2, -1, -1, -1]])
    picks = pl.sample_inverse_frequency(top, pl.caption_counts(top, 4), 3, np.random.default_rng(0))
    assert sorted(picks[0].tolist()) == [-1, 1, 3] and sorted(picks[1].tolist()) == [-1, -1, 2]


# ----------------------------------------------------------------------------------------------
# Step 3: bounded-memory top-K

def test_chunked_top_k_equals_the_unchunked_computation(tmp_path):
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(37, 16, generator=g), dim=-1)
    vocab = F.normalize(torch.randn(1000, 16, generator=g), dim=-1)
    full_s, full_i = (queries @ vocab.t()).topk(10, dim=1)
    chunks = [(s, vocab[s:s + 97]) for s in range(0, 1000, 97)]
    s, i = pl.topk_chunked(queries, chunks, 10, clip_block=8)
    assert torch.equal(i, full_i) and torch.allclose(s, full_s, atol=1e-6)
    path = str(tmp_path / "vocab.npy")                   # the same through the on-disk cache format
    np.save(path, vocab.numpy())
    s2, i2 = pl.topk_chunked(queries, pl.npy_chunks(path, chunk=61), 10, clip_block=5)
    assert torch.equal(i2, full_i)
    small_s, small_i = pl.topk_chunked(queries, [(0, vocab[:3])], 5)   # fewer rows than k
    assert (small_i[:, 3:] == -1).all() and torch.isinf(small_s[:, 3:]).all()


def test_vocabulary_embeddings_are_cached_once_and_read_in_chunks(tiny_model, tmp_path):
    texts = [f"a slow piano tune number {i}" for i in range(50)]
    path = pl.embed_vocabulary(tiny_model, texts, str(tmp_path), chunk=16, progress=False)
    mtime = os.path.getmtime(path)
    assert pl.embed_vocabulary(tiny_model, texts, str(tmp_path), chunk=16, progress=False) == path
    assert os.path.getmtime(path) == mtime
    read = torch.cat([c for _, c in pl.npy_chunks(path, chunk=7)])
    assert torch.allclose(read, pl.embed_text(tiny_model, texts), atol=1e-6)
    assert pl.embed_vocabulary(tiny_model, texts[:-1], str(tmp_path), progress=False) != path


def test_own_captions_are_dropped_from_the_ranking():
    top = np.array([[5, 2, 7, 1], [0, 3, 4, 6]])
    assert pl.drop_own(top, [{2}, set()], 3).tolist() == [[5, 7, 1], [0, 3, 4]]


# ----------------------------------------------------------------------------------------------
# Step 5 and the command line: the written manifest

def _label(tones, model_path, out, tmp_path, *extra):
    return pl.main(["label", "--manifest", tones, "--out", out, "--model", model_path,
                    "--vocab", tones, "--vocab", str(tmp_path / "vocab.txt"), "--k", "5",
                    "--long", "3", "--short", "2", "--cache-dir", str(tmp_path / "cache"), *extra])


def test_label_writes_pseudo_fields_that_text_entries_reads(tiny_model, tones, tmp_path):
    model_path = str(tmp_path / "mulan.pt")
    pl.save_mulan(model_path, tiny_model)
    sentences = ["A bright organ hymn in a major key.", "Slow guitar chords with a soft beat.",
                 "An airy flute over quiet drums.", "A deep bass line at a fast tempo."]
    (tmp_path / "vocab.txt").write_text("\n".join(sentences + ["lo-fi", "solo flute", "drums"]) + "\n")
    out = str(tmp_path / "out" / "labelled.jsonl")
    report = _label(tones, model_path, out, tmp_path)
    entries, source = data.read_manifest(out), data.read_manifest(tones)
    vocab = pl.read_vocabulary(tones, str(tmp_path / "vocab.txt"))
    assert len(entries) == len(source) == report["clips"]
    for e, s in zip(entries, source):
        assert e["audio"] == s["audio"] and os.path.exists(e["audio"])
        assert len(e["pseudo_captions"]) == 3 and len(set(e["pseudo_captions"])) == 3
        assert set(e["pseudo_captions"]) <= set(vocab.long) and set(e["pseudo_tags"]) <= set(vocab.short)
        assert not set(e["pseudo_captions"]) & set(s["captions"])          # its own captions excluded
        assert len(e["pseudo_tags"]) == 2 and "tone" not in e["pseudo_tags"]  # 3 short texts not its own
        batch = data.text_entries(e, 32)
        assert all(c in batch for c in e["pseudo_captions"])
        assert all(any(tag in b for b in batch) for tag in e["pseudo_tags"])
    out2 = str(tmp_path / "again.jsonl")                 # deterministic for a seed
    _label(tones, model_path, out2, tmp_path)
    assert [e["pseudo_captions"] for e in data.read_manifest(out2)] == [e["pseudo_captions"] for e in entries]
    assert report["long"]["vocabulary"] == len(vocab.long) and "sampled" in report["long"]


def test_read_vocabulary_kinds(tmp_path):
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"caption": "Piano, fast, major key.", "attributes": {}}, {"text": "a b c d e f", "kind": "short"},
        "lo-fi", {"audio": "x.wav", "captions": ["A long one here."], "tags": ["tag"]}]) + "\n")
    (tmp_path / "v.txt").write_text("lo-fi\nsome words make a sentence\n")
    v = pl.read_vocabulary(str(tmp_path / "v.jsonl"), str(tmp_path / "v.txt"))
    assert v.long == ["Piano, fast, major key.", "A long one here.", "some words make a sentence"]
    assert v.short == ["a b c d e f", "lo-fi", "tag"]


def test_claims_and_agreement_with_true_attributes():
    assert pl.claims("A fast reel on a bass guitar, with drums, in a minor key.") == {
        "tempo": "fast", "instrument": "bass", "drums": True, "mode": "minor"}
    assert pl.claims("piano and organ, slow-paced, played solo") == {"tempo": "slow", "drums": False}
    truth = [{"tempo": "slow", "instrument": "piano", "drums": False, "mode": "major"},
             {"tempo": None, "instrument": "flute", "drums": True, "mode": "minor"}]
    got = pl.agreement([["slow piano"], ["fast flute with drums"]], truth)
    assert got["tempo"] == (0.5, 2) and got["instrument"] == (1.0, 2) and got["drums"] == (1.0, 1)
    assert pl.label_entropy([[0, 1], [2, 3]])["entropy_bits"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# Training and the exported toy T5

def test_train_exports_a_t5_that_load_t5_reproduces_exactly(tones, tmp_path):
    out, t5_dir = str(tmp_path / "run"), str(tmp_path / "t5")
    pl.main(["train", "--manifest", tones, "--out", out, "--export-t5", t5_dir, "--steps", "2",
             "--batch-size", "4", "--holdout", "0.3", "--cache-dir", "", "--eval-every", "0"])
    model = pl.load_mulan(os.path.join(out, "mulan.pt"))
    tokenizer, encoder = text.load_t5(t5_dir)
    prompts = ["a slow piano tune in a major key", "lo-fi guitar ballad", "fast drums and bass"]
    ids, mask = tokenizer(prompts, 32)
    ids2, mask2 = model.tokenizer(prompts, 32)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert torch.equal(encoder(ids, mask), model.text.t5(ids, mask))
    assert encoder.config.d_model == 128 and encoder.config.feed_forward_proj == "gated-gelu"
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert os.path.getsize(os.path.join(t5_dir, "model.safetensors")) < 2e6
    assert os.path.getsize(os.path.join(out, "mulan.pt")) < 3e6
    assert model.checkpoint["metrics"]["heldout"]["clips"] > 0


def test_sentencepiece_model_is_deterministic_with_t5_special_ids():
    sentences = pl.tokenizer_sentences([{"captions": ["A slow air."], "tags": ["flute"]}], helpers.CAPTIONS)
    first, second = pl.train_sentencepiece(sentences, 150), pl.train_sentencepiece(sentences, 150)
    assert first == second
    sp = text.Tokenizer(first).sp
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sp.encode_as_pieces("LO-FI Guitar") == sp.encode_as_pieces("lo-fi guitar")   # lower-cased


def test_embed_audio_averages_non_overlapping_windows(tiny_model):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(2))
    e_a, e_b = pl.embed_audio(tiny_model, [a, b], 16000)
    both = pl.embed_audio(tiny_model, [np.concatenate([a, b, a[:8000]])], 16000)  # remainder dropped
    assert torch.allclose(both[0], F.normalize(e_a + e_b, dim=0), atol=1e-5)
    assert torch.allclose(pl.embed_audio(tiny_model, torch.from_numpy(np.stack([a, b])), 16000),
                          torch.stack([e_a, e_b]), atol=1e-6)
    at_24k = data.fft_resample(a.astype(np.float64), 16000, 24000).astype(np.float32)
    assert torch.allclose(pl.embed_audio(tiny_model, [at_24k], 24000)[0], e_a, atol=1e-4)
    short = pl.embed_audio(tiny_model, [a[:4000]], 16000)                     # shorter than a window
    assert short.shape == (1, 16) and torch.allclose(short.norm(dim=1), torch.ones(1))
    sims = pl.similarity(pl.embed_text(tiny_model, ["slow piano", "fast drums"]), torch.stack([e_a, e_b]))
    assert sims.shape == (2, 2) and (sims.abs() <= 1 + 1e-6).all()


# ----------------------------------------------------------------------------------------------
# Command-line errors: exit 2, one line, no traceback

def test_cli_errors_exit_2_with_one_line(tones, tmp_path, capsys):
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "o.jsonl")
    cases = [["label", "--manifest", str(tmp_path / "missing.jsonl"), "--out", out, "--model", str(bad_model)],
             ["label", "--manifest", tones, "--out", out, "--model", str(bad_model), "--vocab", tones],
             ["label", "--manifest", tones, "--out", out, "--model", str(bad_model), "--k", "2", "--long", "3"],
             ["label", "--manifest", tones, "--out", tones, "--model", str(bad_model), "--vocab", tones],
             ["train", "--manifest", tones, "--steps", "0"],
             ["train", "--manifest", tones, "--scale", "huge"],
             ["eval", "--manifest", tones, "--model", str(tmp_path / "none.pt")],
             ["train", "--steps", "many"], ["bogus"]]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            pl.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and "Traceback" not in "".join(err) and "error" in err[-1], argv
    run = subprocess.run([sys.executable, "pseudolabel.py", "label", "--manifest", tones, "--out", out,
                          "--model", str(bad_model), "--vocab", tones], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "bad.pt" in run.stderr


# ----------------------------------------------------------------------------------------------
# Describing a clip (sample.py --describe)

def test_add_labels_appends_what_the_prompt_does_not_say():
    heard = {"tempo": "slow", "instrument": "organ", "drums": "solo"}
    assert pl.add_labels("a tune for a rainy day.", heard) == "a tune for a rainy day, slow, organ, solo"
    assert pl.add_labels("A FAST piano piece with Drums", heard) == "A FAST piano piece with Drums"
    assert pl.add_labels("", heard) == "slow, organ, solo"
    assert pl.add_labels("bassoon solo", heard) == "bassoon solo, slow, organ"      # words, not substrings
    assert pl.add_labels("a slowly built tune", heard) == "a slowly built tune, slow, organ, solo"


def test_the_shipped_mulan_hears_the_toy_label_sets_in_real_clips():
    """hear_labels on real toy-corpus clips: each of the toy sets' labels right for at least 11 of 12
    (the model's zero-shot accuracy on 100 held-out clips is 98-100%; mode, at chance, is not a set)."""
    import toy_corpus
    model = pl.load_mulan()
    tunes = toy_corpus.load_tunes()
    rng = np.random.default_rng(7)
    clips, truth = [], []
    for k in range(12):
        tune = tunes[int(rng.integers(len(tunes)))]
        attrs = toy_corpus.draw_attributes(rng, tune, 4.0, tempo=("slow", "fast")[k % 2],
                                           instrument=toy_corpus.INSTRUMENTS[k % 5], drums=k % 3 == 0)
        clips.append(toy_corpus.render_clip(tune, attrs, rng)[0])
        truth.append({"tempo": attrs["tempo"], "instrument": attrs["instrument"],
                      "drums": "drums" if attrs["drums"] else "solo"})
    heard = pl.hear_labels(model, clips, toy_corpus.SAMPLE_RATE)
    for name in pl.TOY_LABEL_SETS:
        assert sum(h[name] == t[name] for h, t in zip(heard, truth)) >= 11, name


@pytest.mark.parametrize("content", ['{"tempo": ["slow"]}', '["slow", "fast"]', "{}", "not json",
                                     '{"tempo": ["slow", ""]}'])
def test_bad_label_files_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(pl.UsageError) as e:
        pl.read_label_sets(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "ok.json").write_text('{"mood": ["calm", "tense"]}')
    assert pl.read_label_sets(str(tmp_path / "ok.json")) == {"mood": ["calm", "tense"]}
