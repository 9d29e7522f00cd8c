"""text.py against transformers' T5: committed fixtures made by tests/fixtures/make_t5_fixtures.py
(transformers itself is not needed here), plus the loader's error handling and the embedding cache."""
import json
import os
import shutil
import struct

import pytest
import torch

import text
from text import T5LoadError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "t5")
REFERENCE = json.load(open(os.path.join(FIXTURES, "reference.json"), encoding="utf-8"))
HIDDEN = text.read_safetensors(os.path.join(FIXTURES, "reference.safetensors"))
VARIANTS = ["relu", "gated"]     # original T5 (model.safetensors), T5 v1.1 (full enc-dec pytorch_model.bin)


def fixture(name):
    return os.path.join(FIXTURES, name)


def reference_batch(name):
    batch = REFERENCE["batch"][name]
    return torch.tensor(batch["ids"]), torch.tensor(batch["mask"])


def encode(encoder, ids, mask):
    with torch.no_grad():
        return encoder(ids, mask)


def copy_fixture(tmp_path, name="relu"):
    folder = str(tmp_path / name)
    shutil.copytree(fixture(name), folder)
    return folder


# -----------------------------------------------------------------------------
# equivalence with transformers

@pytest.mark.parametrize("name", VARIANTS)
def test_encoder_matches_transformers(name):
    _, encoder = text.load_t5(fixture(name))
    ids, mask = reference_batch(name)
    assert not mask.all() and mask.any(1).all()           # the batch has padding
    out = encode(encoder, ids, mask)
    expected = HIDDEN[f"{name}.last_hidden_state"]
    assert out.shape == expected.shape == (*ids.shape, encoder.config.d_model)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_padded_keys_are_ignored(name):
    _, encoder = text.load_t5(fixture(name))
    ids, mask = reference_batch(name)
    scrambled = torch.where(mask, ids, torch.randint_like(ids, 3, 300))
    a, b = encode(encoder, ids, mask), encode(encoder, scrambled, mask)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_tokenizer_matches_transformers(name):
    tokenizer, _ = text.load_t5(fixture(name))
    for s, expected in zip(REFERENCE["texts"], REFERENCE["ids"][name]):
        ids, mask = tokenizer([s], max_len=len(expected))
        assert ids[0].tolist() == expected, s
        assert mask.all()
    batch = REFERENCE["batch"][name]
    ids, mask = tokenizer(batch["texts"], batch["max_len"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == batch["ids"] and mask.tolist() == batch["mask"]


def test_tokenizer_truncates_pads_and_checks():
    tokenizer, _ = text.load_t5(fixture("relu"))
    ids, mask = tokenizer(["a long caption about a slow piano ballad in a minor key", ""], max_len=5)
    assert ids.shape == mask.shape == (2, 5)
    assert ids[0, -1] == tokenizer.eos_id and mask[0].all()               # truncated, EOS kept
    assert ids[1].tolist() == [tokenizer.eos_id, 0, 0, 0, 0]               # empty: EOS, then pad 0
    assert mask[1].tolist() == [True, False, False, False, False]
    assert tokenizer(["x"], max_len=1)[0].tolist() == [[tokenizer.eos_id]]
    with pytest.raises(TypeError):
        tokenizer("not a list", 8)


def test_bfloat16_is_close():
    _, encoder = text.load_t5(fixture("gated"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in encoder.parameters())
    ids, mask = reference_batch("gated")
    out = encode(encoder, ids, mask)
    expected = HIDDEN["gated.last_hidden_state"]
    assert out.dtype == torch.bfloat16
    err = (out.float() - expected).abs().max() / expected.abs().max()
    assert err < 0.05
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), expected.flatten(), dim=0) > 0.999


def test_encoder_is_frozen():
    _, encoder = text.load_t5(fixture("relu"))
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


# -----------------------------------------------------------------------------
# checkpoint formats

def test_safetensors_reader_dtypes():
    """Probe tensors written by the safetensors package itself, in F32, F16, BF16 and I64."""
    x = HIDDEN["probe.f32"]
    for key, dtype in [("probe.f16", torch.float16), ("probe.bf16", torch.bfloat16)]:
        assert HIDDEN[key].dtype == dtype and torch.equal(HIDDEN[key].float(), x)
    assert torch.equal(HIDDEN["probe.i64"], torch.arange(5) - 2)


def test_load_from_pytorch_model_bin(tmp_path):
    folder = copy_fixture(tmp_path, "relu")
    tensors = text.read_safetensors(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
    _, encoder = text.load_t5(folder)
    torch.testing.assert_close(encode(encoder, *reference_batch("relu")), HIDDEN["relu.last_hidden_state"],
                               atol=1e-5, rtol=0)


def test_full_encoder_decoder_safetensors_bfloat16(tmp_path):
    """The v1.1 encoder-decoder checkpoint (bfloat16, decoder and lm_head included) as safetensors."""
    folder = copy_fixture(tmp_path, "gated")
    path = os.path.join(folder, "pytorch_model.bin")
    tensors = torch.load(path, weights_only=True)
    assert any(k.startswith("decoder.") for k in tensors) and tensors["shared.weight"].dtype == torch.bfloat16
    os.remove(path)
    text.write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    _, encoder = text.load_t5(folder)
    torch.testing.assert_close(encode(encoder, *reference_batch("gated")), HIDDEN["gated.last_hidden_state"],
                               atol=1e-5, rtol=0)


def test_sharded_safetensors(tmp_path):
    folder = copy_fixture(tmp_path, "relu")
    tensors = text.read_safetensors(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        text.write_safetensors(os.path.join(folder, shard), {k: tensors[k] for k in keys})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    _, encoder = text.load_t5(folder)
    torch.testing.assert_close(encode(encoder, *reference_batch("relu")), HIDDEN["relu.last_hidden_state"],
                               atol=1e-5, rtol=0)


def test_embedding_named_embed_tokens_and_float16(tmp_path):
    """An encoder-only checkpoint may name its embedding encoder.embed_tokens.weight; F16 is read too."""
    folder = copy_fixture(tmp_path, "relu")
    rewrite_safetensors(folder, lambda t: t.update(
        {"encoder.embed_tokens.weight": t.pop("shared.weight"), **{k: v.half() for k, v in t.items()}}))
    _, encoder = text.load_t5(folder)
    torch.testing.assert_close(encode(encoder, *reference_batch("relu")), HIDDEN["relu.last_hidden_state"],
                               atol=0.02, rtol=0)


def test_config_spelled_with_dense_act_fn():
    raw = {"d_model": 8, "is_gated_act": True, "dense_act_fn": "gelu_new"}
    assert text.config_from_dict(raw).feed_forward_proj == "gated-gelu"
    assert text.config_from_dict({"feed_forward_proj": "gated-gelu", "is_gated_act": True,
                                  "dense_act_fn": "gelu_new"}).feed_forward_proj == "gated-gelu"
    assert text.config_from_dict({}).feed_forward_proj == "relu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    tokenizer, encoder = text.load_t5(fixture("gated"), dtype=dtype)
    text.save_t5(str(tmp_path / "saved"), tokenizer, encoder)
    tokenizer2, encoder2 = text.load_t5(str(tmp_path / "saved"), dtype=dtype)
    assert encoder2.config == encoder.config
    for (k, a), (k2, b) in zip(encoder.state_dict().items(), encoder2.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    ids, mask = tokenizer2(REFERENCE["texts"], 32)
    assert torch.equal(ids, tokenizer(REFERENCE["texts"], 32)[0])
    assert torch.equal(encode(encoder, ids, mask), encode(encoder2, ids, mask))


def test_save_a_fresh_encoder(tmp_path):
    """The lead's path for the toy text encoder: build, (train,) save, load."""
    config = text.T5Config(vocab_size=416, d_model=16, d_kv=4, num_heads=2, d_ff=24, num_layers=1,
                           feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    encoder = text.T5Encoder(config)
    text.save_t5(str(tmp_path), os.path.join(fixture("relu"), "spiece.model"), encoder)
    tokenizer, loaded = text.load_t5(str(tmp_path))
    ids, mask = tokenizer(["slow piano"], 8)
    assert torch.equal(encode(encoder, ids, mask), encode(loaded, ids, mask))


def test_relative_position_buckets():
    rel = torch.arange(-200, 201)
    bucket = text.relative_position_bucket(rel, num_buckets=32, max_distance=128)
    assert bucket.min() == 0 and bucket.max() == 31
    distance = torch.arange(8)
    assert torch.equal(bucket[200 - distance], distance)                  # exact buckets, keys before
    assert torch.equal(bucket[200 + distance[1:]], 16 + distance[1:])     # ... and after
    assert (bucket[:200 - 127] == 15).all() and (bucket[200 + 128:] == 31).all()   # past max_distance
    assert (bucket[:201].diff() <= 0).all() and (bucket[201:].diff() >= 0).all()  # monotone in distance


# -----------------------------------------------------------------------------
# broken checkpoints: one-line T5LoadError naming the file

def edit_json(path, **changes):
    with open(path) as f:
        raw = json.load(f)
    raw.update(changes)
    with open(path, "w") as f:
        json.dump(raw, f)


def rewrite_safetensors(folder, change):
    path = os.path.join(folder, "model.safetensors")
    tensors = text.read_safetensors(path)
    change(tensors)
    text.write_safetensors(path, tensors)


def truncate(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep(len(data))])


def lie_about_header_length(path, delta):
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(0)
        f.write(struct.pack("<Q", n + delta))


def to_bin_then_truncate(folder):
    tensors = text.read_safetensors(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
    truncate(os.path.join(folder, "pytorch_model.bin"), lambda n: n // 2)


BREAKS = {  # name: (what to do to a copy of the relu fixture, the file the message must name, a word in it)
    "missing tensor": (lambda d: rewrite_safetensors(d, lambda t: t.pop("encoder.final_layer_norm.weight")),
                       "model.safetensors", "encoder.final_layer_norm.weight"),
    "wrong shape": (lambda d: rewrite_safetensors(
        d, lambda t: t.update({"encoder.block.1.layer.1.DenseReluDense.wi.weight": torch.zeros(65, 32)})),
                    "model.safetensors", "shape"),
    "config disagrees": (lambda d: edit_json(os.path.join(d, "config.json"), d_kv=16),
                         "model.safetensors", "shape"),
    "truncated safetensors": (lambda d: truncate(os.path.join(d, "model.safetensors"), lambda n: n - 100),
                              "model.safetensors", "truncated"),
    "safetensors header only": (lambda d: truncate(os.path.join(d, "model.safetensors"), lambda n: 5),
                                "model.safetensors", "too short"),
    "header length too long": (lambda d: lie_about_header_length(os.path.join(d, "model.safetensors"), 1 << 40),
                               "model.safetensors", "header length"),
    "header length too short": (lambda d: lie_about_header_length(os.path.join(d, "model.safetensors"), -10),
                                "model.safetensors", "JSON"),
    "truncated bin": (to_bin_then_truncate, "pytorch_model.bin", "cannot read"),
    "no weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), "", "no weights"),
    "unknown feed_forward_proj": (lambda d: edit_json(os.path.join(d, "config.json"), feed_forward_proj="gated-silu"),
                                  "config.json", "gated-silu"),
    "unknown model_type": (lambda d: edit_json(os.path.join(d, "config.json"), model_type="umt5"),
                           "config.json", "umt5"),
    "bad config value": (lambda d: edit_json(os.path.join(d, "config.json"), num_heads="four"),
                         "config.json", "num_heads"),
    "huge config": (lambda d: edit_json(os.path.join(d, "config.json"), d_model=1 << 24, vocab_size=1 << 24),
                    "model.safetensors", "parameters"),
    "too many layers": (lambda d: edit_json(os.path.join(d, "config.json"), d_model=1, d_kv=1, num_heads=1,
                                            d_ff=1, num_layers=5000), "model.safetensors", "5000 layers"),
    "missing config": (lambda d: os.remove(os.path.join(d, "config.json")), "config.json", "not found"),
    "malformed config": (lambda d: truncate(os.path.join(d, "config.json"), lambda n: n // 2),
                         "config.json", "JSON"),
    "missing spiece.model": (lambda d: os.remove(os.path.join(d, "spiece.model")), "spiece.model", "not found"),
    "malformed spiece.model": (lambda d: truncate(os.path.join(d, "spiece.model"), lambda n: 1000),
                               "spiece.model", "SentencePiece"),
}


@pytest.mark.parametrize("case", BREAKS)
def test_broken_checkpoint_gives_one_line_error(tmp_path, case):
    folder = copy_fixture(tmp_path)
    damage, file, word = BREAKS[case]
    damage(folder)
    with pytest.raises(T5LoadError) as err:
        text.load_t5(folder)
    message = str(err.value)
    named = os.path.join(folder, file) if file else folder
    assert "\n" not in message and message.startswith(named) and word in message, message


def test_not_a_directory(tmp_path):
    with pytest.raises(T5LoadError, match="not a directory"):
        text.load_t5(str(tmp_path / "nothing"))


# -----------------------------------------------------------------------------
# embedding cache

def test_cache_encodes_each_caption_once():
    tokenizer, encoder = text.load_t5(fixture("relu"))
    texts = ["slow piano", "fast drums", "slow piano", ""]
    ids, expected_mask = tokenizer(texts, 16)
    direct = encode(encoder, ids, expected_mask)
    batches = []
    encoder.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    cache = text.EmbeddingCache(tokenizer, encoder, max_len=16)
    emb, mask = cache(texts)
    assert batches == [3]                                   # one batch, each distinct caption once
    assert emb.shape == (4, 16, 32) and torch.equal(mask, expected_mask)
    torch.testing.assert_close(emb[mask], direct[mask], atol=1e-6, rtol=0)
    assert (emb[~mask] == 0).all()
    emb2, mask2 = cache(["fast drums", "slow piano"])
    assert batches == [3] and cache.hits == 3 and len(cache) == 3      # nothing re-encoded
    assert torch.equal(emb2, emb[[1, 0]]) and torch.equal(mask2, mask[[1, 0]])
    cache(["bass flute", "slow piano"])
    assert batches == [3, 1]


def test_cache_key_has_encoder_identity_and_length():
    tokenizer, encoder = text.load_t5(fixture("relu"))
    same = text.load_t5(fixture("relu"))[1]
    other = text.load_t5(fixture("relu"))[1]
    with torch.no_grad():
        other.final_norm.weight.add_(1)
    fingerprints = [text.EmbeddingCache(tokenizer, e, 16).fingerprint for e in (encoder, same, other)]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    a, b = text.EmbeddingCache(tokenizer, encoder, 16), text.EmbeddingCache(tokenizer, encoder, 8)
    assert a.key("x") != b.key("x")
