"""A text-only toy T5: the encoder of text.py pre-trained on captions with T5's span corruption.

    python t5_pretrain.py --out DIR [--like checkpoints/toy/t5] [--steps 3000] [--batch 64] [--captions 30000]
                          [--device cpu]

The paper conditions every stage on a T5 encoder (section 3.4) that was pre-trained on text alone
and frozen before any audio model trained, so it tells "major" from "minor" whether or not an audio
model could hear the difference. This file gives the toy scale such an encoder: the config and
SentencePiece model of `--like` (by default the toy encoder that the MuLan-style model's text tower
exports, pseudolabel.py), fresh weights, trained on the toy corpus's caption vocabulary (long
sentences with synonyms, short tags and metadata, toy_corpus.py, drawn without rendering audio).

The objective is T5's span corruption (Raffel et al. 2020, section 3.1.4): about 15% of each
caption's tokens are corrupted, in spans of mean length 3. Simplification: T5 replaces each span by
one sentinel and a decoder writes the spans out; here every corrupted token is replaced by the mask
id (SentencePiece's <unk>, id 2: the toy vocabulary has no spare sentinel ids) and a linear head on
the encoder's output predicts each original token (a per-token head, as SpanBERT does; Joshi et al.
2020). Only the encoder is kept; the head is dropped.
"""
import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import text
import toy_corpus

MASK_ID = 2          # SentencePiece's <unk>: the corrupted tokens' input id


def span_mask(length, rng, density=0.15, mean_span=3.0):
    """(length,) bool: corrupted positions, about density * length of them in spans of mean length
    mean_span (T5's random_spans_noise_mask: span and gap lengths from random partitions)."""
    n_noise = int(round(length * density))
    n_noise = min(max(n_noise, 1), length - 1)
    n_spans = max(1, int(round(n_noise / mean_span)))
    n_spans = min(n_spans, n_noise, length - n_noise)

    def partition(total, parts):      # `parts` positive integers summing to `total`, uniformly at random
        cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else []
        return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)

    noise, gaps = partition(n_noise, n_spans), partition(length - n_noise, n_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for gap, span in zip(gaps, noise):    # each span follows a gap, so the sequence never opens with one
        pos += gap
        mask[pos:pos + span] = True
        pos += span
    return mask


def corrupt_batch(ids, mask, rng, density=0.15, mean_span=3.0):
    """(inputs, targets) for a (B, L) batch of token ids: corrupted tokens (never EOS or padding) become
    MASK_ID in inputs; targets hold the original id there and -100 (ignored) everywhere else."""
    inputs, targets = ids.clone(), torch.full_like(ids, -100)
    lengths = mask.sum(dim=1) - 1                     # the tokens before EOS
    for b, n in enumerate(lengths.tolist()):
        if n < 2:
            continue
        where = torch.from_numpy(span_mask(n, rng, density, mean_span))
        targets[b, :n][where] = ids[b, :n][where]
        inputs[b, :n][where] = MASK_ID
    return inputs, targets


def caption_corpus(count, seed, seconds=4.0):
    """`count` clips' captions as the toy corpus writes them: long sentences, short tags joined with
    commas, and the metadata's values; no audio is rendered."""
    tunes = toy_corpus.load_tunes()
    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(count):
        tune = tunes[int(rng.integers(len(tunes)))]
        attrs = toy_corpus.draw_attributes(rng, tune, seconds)
        captions += toy_corpus.long_captions(tune, attrs, rng)
        captions.append(", ".join(toy_corpus.short_tags(tune, attrs, rng)))
        meta = toy_corpus.metadata(tune, attrs)
        captions.append(", ".join(str(v) for v in meta.values()))
    return captions


def pretrain(tokenizer, config, captions, steps, batch=64, max_len=48, lr=2e-3, seed=0, log=print, device="cpu"):
    """A T5Encoder of `config`, trained from scratch by span corruption on `captions` (returned on the CPU)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = text.T5Encoder(config)
    for name, p in encoder.named_parameters():    # T5's init scale, roughly: N(0, 1/sqrt(fan_in)); norms at 1
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=p.shape[1] ** -0.5 if "embed" not in name else 1.0)
    head = torch.nn.Linear(config.d_model, config.vocab_size)
    encoder, head = encoder.to(device), head.to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ids_all, mask_all = tokenizer(captions, max_len)
    t0 = time.perf_counter()
    for step in range(steps):
        frac = step / max(1, steps)
        for g in opt.param_groups:                # linear warm-up over 5%, then cosine to 0
            g["lr"] = lr * min(1.0, (step + 1) / (0.05 * steps)) * 0.5 * (1 + np.cos(np.pi * frac))
        pick = torch.from_numpy(rng.choice(len(captions), batch, replace=False))
        inputs, targets = corrupt_batch(ids_all[pick], mask_all[pick], rng)
        inputs, targets, mask = inputs.to(device), targets.to(device), mask_all[pick].to(device)
        logits = head(encoder(inputs, mask))                               # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"span-corruption loss is {loss.item()} at step {step}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            hit = (logits.argmax(-1) == targets)[targets >= 0].float().mean().item()
            log(f"step {step}: loss {loss.item():.3f}, corrupted tokens recovered {hit:.0%} "
                f"({time.perf_counter() - t0:.0f} s)")
    return encoder.cpu().eval().requires_grad_(False)


def main(argv=None):
    p = argparse.ArgumentParser(description="Pre-train the toy T5 encoder on captions (span corruption).")
    p.add_argument("--out", required=True, help="output directory (Hugging Face T5 layout)")
    p.add_argument("--like", default="checkpoints/toy/t5", help="T5 directory whose config and tokenizer to use")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--captions", type=int, default=30000, help="clips whose captions form the corpus")
    p.add_argument("--batch", type=int, default=64, help="captions per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.steps < 1 or args.captions < 10 or args.batch < 1:
        p.error("--steps and --batch must be >= 1 and --captions >= 10")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    try:
        tokenizer, like = text.load_t5(args.like)
    except (text.T5LoadError, OSError) as e:
        p.error(f"--like {args.like}: {e}")
    captions = caption_corpus(args.captions, args.seed)
    print(f"{len(captions)} captions", file=sys.stderr)
    encoder = pretrain(tokenizer, like.config, captions, args.steps, batch=args.batch, seed=args.seed,
                       device=torch.device(args.device))
    text.save_t5(args.out, tokenizer, encoder)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
