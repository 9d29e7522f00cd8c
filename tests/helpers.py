"""Small things several tests build: a manifest of synthetic tones, a tiny random T5 directory, and a
whole cascade trained for one step."""
import json
import os
import socket

import numpy as np
import sentencepiece as spm
import soundfile as sf
import torch

import cascade
import text
import train

def free_port():
    """A TCP port no one listens on now, for a torchrun rendezvous (a fixed port may still be held by an
    earlier run's socket)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_error(r):
    """The start and the end of a failed process's stderr (a rank's own error is printed first, the
    launcher's summary last)."""
    err = r.stderr
    return err if len(err) < 4000 else err[:2000] + "\n...\n" + err[-2000:]


CAPTIONS = ["a slow piano tune in a major key", "fast drums and bass", "a gentle flute melody",
            "an organ chorale, solo", "lo-fi guitar ballad", "a minor folk reel on the guitar"]


def write_tone_manifest(folder, n=4, seconds=4.0, rate=24000):
    """n clips of harmonic tones with captions; returns the manifest path."""
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        for i in range(n):
            f0 = 110.0 * 2 ** (i / 3)
            wave = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (i + 1) * t) ** 2)
            path = f"audio/{i:03d}.wav"
            sf.write(os.path.join(folder, path), wave.astype(np.float32), rate)
            f.write(json.dumps({"audio": path, "captions": [CAPTIONS[i % len(CAPTIONS)]], "tags": ["tone"]}) + "\n")
    return os.path.join(folder, "manifest.jsonl")


def write_tiny_t5(folder, d_model=32):
    """A random-weight T5 (v1.1 layout) and a SentencePiece model trained on CAPTIONS."""
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "sp")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS * 5), model_prefix=prefix, vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    torch.manual_seed(0)
    config = text.T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                           feed_forward_proj="gated-gelu")
    text.save_t5(folder, prefix + ".model", text.T5Encoder(config))
    return folder


def train_tiny_cascade(folder):
    """Every stage trained for one step on tones with a tiny T5, exported as inference checkpoints;
    returns the checkpoint folder (folder/ckpt)."""
    folder = str(folder)
    manifest, t5 = write_tone_manifest(folder), write_tiny_t5(os.path.join(folder, "t5"))
    for stage in cascade.STAGES:
        cfg = train.TrainConfig(stage=stage, data=manifest, out=os.path.join(folder, "run"), steps=1, batch_size=1,
                                workers=0, t5=t5, eval_every=0, device="cpu")
        train.train_stage(cfg, stage)
    train.export_inference(os.path.join(folder, "run"), os.path.join(folder, "ckpt"))
    return os.path.join(folder, "ckpt")
