"""t5_pretrain.py: T5's span corruption on captions (Raffel et al. 2020, section 3.1.4), per-token head."""
import dataclasses
import os

import numpy as np
import torch

import t5_pretrain
import text

TOY_T5 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "toy", "t5")


def test_span_mask_has_the_density_and_mean_span_length():
    rng = np.random.default_rng(0)
    total, spans, corrupted = 0, 0, 0
    for _ in range(200):
        m = t5_pretrain.span_mask(40, rng)
        assert not m[0] and m.sum() == 6                   # round(0.15 * 40); a gap comes first
        starts = np.flatnonzero(m & ~np.concatenate([[False], m[:-1]]))
        spans, corrupted, total = spans + len(starts), corrupted + m.sum(), total + 1
    assert 2.5 <= corrupted / spans <= 3.5                 # mean span length ~3
    short = t5_pretrain.span_mask(2, rng)
    assert short.sum() == 1 and not short[0]


def test_corrupt_batch_masks_only_real_tokens_and_targets_them():
    tokenizer, _ = text.load_t5(TOY_T5)
    ids, mask = tokenizer(["a slow minor tune on an organ with drums, in a minor key", "fast flute"], 24)
    inputs, targets = t5_pretrain.corrupt_batch(ids, mask, np.random.default_rng(1))
    hit = targets >= 0
    assert hit.any(dim=1).all()
    assert torch.equal(targets[hit], ids[hit]) and (inputs[hit] == t5_pretrain.MASK_ID).all()
    assert torch.equal(inputs[~hit], ids[~hit])            # everything else, EOS and padding included, unchanged
    eos = ids == text.Tokenizer.eos_id
    assert not (hit & (eos | ~mask)).any()


def test_pretraining_lowers_the_span_loss_on_a_tiny_model():
    tokenizer, like = text.load_t5(TOY_T5)
    config = dataclasses.replace(like.config, d_model=32, d_kv=8, d_ff=64, num_layers=1)
    captions = t5_pretrain.caption_corpus(12, seed=0)
    losses = []
    encoder = t5_pretrain.pretrain(tokenizer, config, captions, steps=80, batch=16, max_len=32, lr=5e-3,
                                   log=lambda m: losses.append(float(m.split("loss ")[1].split(",")[0])))
    assert losses[-1] < 0.75 * losses[0]
    ids, mask = tokenizer(captions[:2], 32)
    assert encoder(ids, mask).shape == (2, 32, 32) and not encoder.training
