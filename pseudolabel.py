"""
Pseudo-labelling of music audio (section 3.5 of Huang et al. 2023, Noise2Music), with a small
MuLan-style joint embedding model of our own, and the toy T5 text encoder that falls out of it.

    python pseudolabel.py train --manifest toy_data/corpus/manifest.jsonl --out runs/mulan \
        --export-t5 checkpoints/toy/t5
    python pseudolabel.py label --manifest toy_data/corpus/unlabeled/manifest.jsonl \
        --out runs/mulan/pseudo.jsonl --model checkpoints/toy/mulan.pt
    python pseudolabel.py eval --manifest toy_data/corpus/manifest.jsonl --model checkpoints/toy/mulan.pt

MuLan (Huang et al. 2022) co-embeds a 10 s music clip and a sentence that describes it, trained
contrastively on noisy music-text pairs; its weights are not public, so this file
trains a small one. Section 3.5 then uses it as a zero-shot classifier, step by step:
  1. each clip is cut into non-overlapping 10 s windows; the window embeddings are averaged
     (`embed_audio`);
  2. every caption of each vocabulary is embedded once, in chunks, cached on disk
     (`embed_vocabulary`);
  3. the top K = 10 captions per clip by cosine similarity (`topk_chunked`: running top-K over
     vocabulary chunks, so memory does not grow with the vocabulary);
  4. K' of those 10 are sampled without replacement with probability inversely proportional to
     each caption's count among all clips' top-K lists (`sample_inverse_frequency`);
  5. section 3.6 trains on 3 long-form (LaMDA-LF) and 6 short-form (Rater-SF) pseudo labels per
     clip: they are written as the manifest fields `pseudo_captions` and `pseudo_tags`, which
     data.text_entries puts into each clip's text batch (`label_manifest`).

The model (names as in CLIP, Radford et al. 2021, whose loss MuLan uses):
- text tower: text.T5Encoder (non-pooled (B, L, D) token embeddings, what the diffusion stages
  cross-attend to), masked mean pooling over real tokens, a linear projection to the joint space;
- audio tower: a 1-D CNN over the 80 log-mel channels of data.log_mel (16 kHz, 100 fps), mean and
  max pooling over time, a linear projection;
- symmetric InfoNCE over a batch of (clip, text) pairs with a learned temperature (`info_nce`).
After training, the text tower's T5 is exported with text.save_t5: that directory is the toy text
encoder (checkpoints/toy/t5), frozen while the cascade trains, as the paper's T5 is.

Notation:   paper                    code
            MuLan audio / text emb.  embed_audio / embed_text, unit vectors of size E
            K (= 10), K' (= 3)       --k, and --long / --short (3 and 6, section 3.6)
            LaMDA-LF, Rater-SF       the long-form and short-form vocabularies (`Vocabulary`)

Simplifications, all deliberate:
- MuLan's towers are a ResNet-50 / AST audio encoder and a BERT text encoder trained on tens of
  millions of music recordings; here both are tiny (`CONFIGS["toy"]`: about 1M parameters) and trained in minutes
  on the toy corpus's captioned clips. The toy window is the whole 4 s toy clip, not 10 s.
- The text tower is T5 (not BERT), because the same weights then serve as the cascade's text
  encoder at toy scale; at full scale the cascade uses a real pre-trained T5 and
  this MuLan's text tower is independent of it.
- LaMDA does not write our long-form vocabulary: it is the toy corpus's own template captions plus
  its held-out phrasings; the short-form vocabulary is its tags.
- No optimizer state is saved, so training cannot resume (it takes minutes); the released
  weights are rounded to float16 (mulan.pt and the exported T5 both store float16; the model is
  evaluated after the rounding, so the numbers reported are those of the shipped weights).
- One temperature, no queue or memory bank, no hard-negative mining; identical captions of two
  clips in one batch count as negatives of each other (rare with the corpus's varied captions).
- Augmentation is a random 75-100% crop of the window; a clip's texts are its section 4.1 text
  batch (data.text_entries, token length 32), metadata chunks included.
- Rater-LF has no counterpart (section 3.6 leaves it out of training anyway).
Known limit, measured: the toy model hears tempo, instrument and drums/solo, but not major vs
minor (chance): a major scale and its relative minor share their pitch classes, so the mode lies
in which note is the tonic, which a 1 M-parameter CNN on 80 mel bands does not find in minutes.
The T5's token embeddings still tell "major" from "minor" apart, if less than the words it hears
(least per-token cosine between two sentences that differ in that word: 0.66 for major/minor,
-0.27 for slow/fast, 0.03 for piano/flute), so the diffusion stages can learn the mode from
their own (text, audio) pairs.
"""
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import text
from data import add_dataclass_flags as add_fields

FORMAT_VERSION = 1
DEFAULT_MODEL = "checkpoints/toy/mulan.pt"
TOY_CORPUS = "toy_data/corpus"                     # as train.py's TOY_DATA
HELDOUT_VOCAB = "heldout_captions.jsonl"           # the toy corpus's held-out phrasings


# ----------------------------------------------------------------------------------------------
# Configuration: one dataclass, presets `toy` and `full` in one table

@dataclass
class MulanConfig:
    """The joint embedding model: audio tower, text tower (a T5 encoder) and the joint space."""
    embed_dim: int = 128                        # E, the joint space (MuLan: 128)
    window_seconds: float = 4.0                 # audio window (paper: 10 s; toy: the 4 s clip)
    audio_channels: tuple = (64, 128, 128)      # CNN width after the stem and each down-sampling
    token_len: int = 32                         # text length at training time
    t5: dict = field(default_factory=dict)      # text.T5Config fields (vocab_size set by the SPM)
    spm_vocab_size: int = 1024                  # pieces of the SentencePiece model trained here

    def t5_config(self):
        return text.T5Config(**self.t5)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["audio_channels"] = tuple(d["audio_channels"])
        return cls(**d)


# Toy: d_model 128 because the toy diffusion stages' cross-attention expects text width 128.
# 1024 pieces * 128 + 3 blocks * (4 * 128 * 128 + 3 * 128 * 256) = 623k T5 parameters, 1.25 MB
# in float16. Full: a t5-v1_1-base-sized tower and 10 s windows, for a GPU and a real corpus.
CONFIGS = {
    "toy": MulanConfig(t5=dataclasses.asdict(text.T5Config(
        vocab_size=1024, d_model=128, d_kv=32, d_ff=256, num_layers=3, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu"))),
    "full": MulanConfig(window_seconds=10.0, audio_channels=(128, 256, 512, 512), token_len=64,
                        spm_vocab_size=32000, t5=dataclasses.asdict(text.T5Config(
                            vocab_size=32000, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                            num_heads=12, feed_forward_proj="gated-gelu"))),
}


# ----------------------------------------------------------------------------------------------
# The SentencePiece model (T5's special ids: pad 0, EOS 1, unk 2, no BOS)

# General music words, so that prompts beyond the toy corpus ("lo-fi guitar ballad") split into
# sensible pieces. Only the tokenizer sees them; their T5 embeddings stay untrained.
MUSIC_WORDS = """
lo-fi hi-fi ballad song tune melody harmony rhythm beat groove tempo bpm chord chords riff
solo duet trio quartet ensemble orchestra band choir vocal vocals voice singer singing sung
instrumental acoustic electric electronic synth synthesizer sampler drum drums percussion
kick snare hi-hat cymbal tom bass guitar piano keyboard keys organ flute violin viola cello
double bass harp trumpet trombone horn tuba saxophone sax clarinet oboe bassoon recorder
fiddle banjo mandolin ukulele accordion harmonica bagpipes whistle tin whistle bodhran
marimba xylophone vibraphone glockenspiel bells strings brass woodwind woodwinds pad
rock pop jazz blues folk country classical baroque romantic ambient techno house trance dance
disco funk soul reggae hip hop rap metal punk indie gospel chill lounge cinematic orchestral
soundtrack score lullaby march waltz polka reel jig hornpipe chorale hymn anthem carol
major minor key scale mode modal chromatic pentatonic arpeggio staccato legato crescendo
slow fast quick brisk lively upbeat energetic calm relaxed relaxing mellow gentle soft loud
happy sad melancholic joyful bright dark warm cold dreamy peaceful tense dramatic epic
playful cheerful nostalgic romantic mysterious groovy bouncy driving steady swinging
low high deep middle register treble tenor alto soprano baritone bassline bass line
intro verse chorus bridge outro loop sample recording live studio vintage retro modern
catchy simple complex repetitive sparse dense minimal layered texture timbre tone
music musical piece composition track clip sound sounds playing plays played
"""


def tokenizer_sentences(entries, extra_texts=()):
    """Every text of the corpus, for training the SentencePiece model: captions, tags, metadata
    (titles, composers, ...), pseudo labels, the extra texts (held-out phrasings), MUSIC_WORDS."""
    sentences = []
    for e in entries:
        sentences += list(e.get("captions", [])) + list(e.get("pseudo_captions", []))
        sentences += data.short_texts(e)
    sentences += list(extra_texts)
    sentences += MUSIC_WORDS.split() * 10       # weighted, so that they become whole pieces
    return [s for s in (str(x).strip() for x in sentences) if s]


def train_sentencepiece(sentences, vocab_size):
    """A unigram SentencePiece model (as T5's) with T5's special ids; returns its bytes.

    Lower-cased (nmt_nfkc_cf normalization). Deterministic: one thread, no sampling or
    shuffling of the input. `hard_vocab_limit=False` lets a small corpus give fewer pieces.
    """

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    return model.getvalue()


# ----------------------------------------------------------------------------------------------
# The model

def init_t5_(encoder):
    """T5's initialization (transformers' T5PreTrainedModel._init_weights, factor 1): without it
    the unscaled q.k logits (no 1/sqrt(d_kv), text.py) start too large. Works by parameter
    name, for separate (q, k, v; wi_0, wi_1) and stacked (qkv; wi) projections alike."""
    c = encoder.config
    inner = c.num_heads * c.d_kv
    std = {"embed": 1.0, "relative_bias": c.d_model ** -0.5, "q": (c.d_model * c.d_kv) ** -0.5,
           "k": c.d_model ** -0.5, "v": c.d_model ** -0.5, "o": inner ** -0.5, "wi": c.d_model ** -0.5,
           "wi_0": c.d_model ** -0.5, "wi_1": c.d_model ** -0.5, "wo": c.d_ff ** -0.5}
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            module = name.split(".")[-2]                  # "blocks.0.attn.o.weight" -> "o"
            if module == "qkv":                           # rows: q, then k, then v
                p.normal_(std=std["k"])
                p[:inner].normal_(std=std["q"])
            elif module in std:
                p.normal_(std=std[module])


def masked_mean(x, mask):
    """Mean of (B, L, D) over the real tokens of mask (B, L) -> (B, D)."""
    m = mask.to(x.dtype)[..., None]                                      # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextTower(nn.Module):
    """T5 encoder -> masked mean pooling -> linear projection: ids, mask (B, L) -> (B, E)."""

    def __init__(self, config: MulanConfig):
        super().__init__()
        self.t5 = text.T5Encoder(config.t5_config())
        init_t5_(self.t5)
        self.proj = nn.Linear(config.t5["d_model"], config.embed_dim)

    def forward(self, ids, mask):
        tokens = self.t5(ids, mask)                                      # (B, L, D) non-pooled
        return self.proj(masked_mean(tokens, mask))                      # (B, E)


class ResBlock1d(nn.Module):
    """GroupNorm -> GELU -> Conv1d, twice, with an identity skip: (B, C, F) -> (B, C, F)."""

    def __init__(self, channels, kernel=3):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, kernel, padding=kernel // 2),
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, kernel, padding=kernel // 2))

    def forward(self, x):
        return x + self.net(x)


class AudioTower(nn.Module):
    """Log-mel (B, 80, F) at 100 fps -> (B, E).

    The mel channels are the input channels of a 1-D CNN over time: a stride-2 stem (50 fps),
    then per width a residual block and, between widths, a stride-2 convolution; mean and max
    over time (so any number of frames works), then a linear projection. Timbre and register are
    per-frame patterns over channels; tempo and drums are onset rates, which the time pooling of
    local onset detectors measures.
    """

    def __init__(self, config: MulanConfig):
        super().__init__()
        widths = config.audio_channels
        layers = [nn.Conv1d(data.MEL_BINS, widths[0], 5, stride=2, padding=2), ResBlock1d(widths[0])]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv1d(c_in, c_out, 3, stride=2, padding=1), ResBlock1d(c_out)]
        self.net = nn.Sequential(*layers, nn.GroupNorm(8, widths[-1]), nn.GELU())
        self.proj = nn.Linear(2 * widths[-1], config.embed_dim)

    def forward(self, mel):
        h = self.net(mel)                                                # (B, C, F / 2^depth)
        return self.proj(torch.cat([h.mean(-1), h.amax(-1)], dim=1))     # (B, E)


class Mulan(nn.Module):
    """The two towers and the learned temperature of the contrastive loss."""

    def __init__(self, config: MulanConfig, spm_bytes=b""):
        super().__init__()
        self.config = config
        self.audio = AudioTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial 1/T
        self.spm_bytes = bytes(spm_bytes)
        self.tokenizer = text.Tokenizer(spm_bytes) if spm_bytes else None


def info_nce(audio_emb, text_emb, logit_scale):
    """Symmetric InfoNCE (CLIP, Radford et al. 2021; MuLan): pair i is the positive of row i and
    column i, every other item of the batch a negative.

    :param audio_emb: (B, E) unit vectors; :param text_emb: (B, E) unit vectors, paired by row.
    :param logit_scale: log of the inverse temperature, a scalar tensor (clamped at 100 = e^4.6).
    :return: the mean of the audio->text and text->audio cross-entropies.
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * audio_emb @ text_emb.t()                            # (B, B) audio x text
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# ----------------------------------------------------------------------------------------------
# Embedding API (evaluate.py uses these)

class MulanLoadError(ValueError):
    """A mulan.pt that cannot be loaded; the message is one line naming the file."""


def save_mulan(path, model, extra=None):
    """One file: format version, config, float16 weights, SentencePiece bytes, and `extra`."""
    state = {k: v.detach().half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "model": state,
            "spm": model.spm_bytes, **(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_mulan(path=DEFAULT_MODEL):
    """The model saved by `train` (float32, eval mode, no gradients); MulanLoadError if unusable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = Mulan(MulanConfig.from_dict(ckpt["config"]), ckpt["spm"])
        model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    except FileNotFoundError:
        raise MulanLoadError(f"{path}: not found") from None
    except Exception as e:   # a wrong or damaged file: say so in one line
        problem = (str(e).strip().splitlines() or [""])[0][:200]
        raise MulanLoadError(f"{path}: not a usable MuLan checkpoint ({type(e).__name__}: {problem})") from None
    model.checkpoint = {k: v for k, v in ckpt.items() if k not in ("model", "spm")}
    return model.eval().requires_grad_(False)


def audio_windows(wave, window):
    """Non-overlapping windows of `window` samples (section 3.5); a remainder shorter than a
    window is dropped, and a clip shorter than one window is one window of its own length."""
    if len(wave) <= window:
        return [wave]
    return [wave[k * window:(k + 1) * window] for k in range(len(wave) // window)]


def _as_waves(waves):
    """A list of 1-D float32 tensors from a (N, T) tensor/array or a list of 1-D arrays."""
    if isinstance(waves, (np.ndarray, torch.Tensor)) and waves.ndim == 1:
        raise ValueError("waves must be a list of clips or a (N, T) array, not one clip")
    return [torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w,
                            dtype=torch.float32).reshape(-1) for w in waves]


@torch.no_grad()
def embed_audio(model, waves, sample_rate, batch_size=32):
    """MuLan audio embeddings (section 3.5): each clip resampled to 16 kHz, cut into
    non-overlapping windows, each window embedded, the window embeddings averaged.

    :param waves: a list of 1-D numpy arrays or tensors (any lengths), or a (N, T) tensor.
    :param sample_rate: their rate in Hz.
    :return: (N, E) float32 tensor of unit vectors.
    """
    window = int(round(model.config.window_seconds * data.MEL_SAMPLE_RATE))
    waves = _as_waves(waves)
    owner, pieces = [], []                            # pieces[k]: a window of clip owner[k]
    for i, w in enumerate(waves):
        for piece in audio_windows(data.fft_resample(w, int(sample_rate), data.MEL_SAMPLE_RATE), window):
            owner.append(i)
            pieces.append(piece)
    out = torch.zeros(len(waves), model.config.embed_dim)
    by_length = {}                                    # windows of one length share a batch
    for k, p in enumerate(pieces):
        by_length.setdefault(len(p), []).append(k)
    for ks in by_length.values():
        for j in range(0, len(ks), batch_size):
            batch = ks[j:j + batch_size]
            mel = data.log_mel(torch.stack([pieces[k] for k in batch]))   # (b, 80, F)
            emb = F.normalize(model.audio(mel), dim=-1)                   # (b, E)
            out.index_add_(0, torch.tensor([owner[k] for k in batch]), emb)
    return F.normalize(out, dim=-1)


@torch.no_grad()
def embed_text(model, texts, batch_size=256):
    """MuLan text embeddings: a list of N strings -> (N, E) float32 tensor of unit vectors."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings")
    out = torch.empty(len(texts), model.config.embed_dim)
    for i in range(0, len(texts), batch_size):
        ids, mask = model.tokenizer(list(texts[i:i + batch_size]), model.config.token_len)
        L = int(mask.sum(1).max())                    # padding past the longest text changes nothing
        out[i:i + len(ids)] = F.normalize(model.text(ids[:, :L], mask[:, :L]), dim=-1)
    return out


def similarity(a, b):
    """Cosine similarity of every row of a (N, E) with every row of b (M, E) -> (N, M)."""
    return F.normalize(torch.as_tensor(a, dtype=torch.float32), dim=-1) @ \
        F.normalize(torch.as_tensor(b, dtype=torch.float32), dim=-1).t()


# ----------------------------------------------------------------------------------------------
# Describing a user's clip: the pseudo-labels of one piece of audio, added to a prompt

# One label per set, the one MuLan hears best (step 3 with K = 1). The toy's sets: what its MuLan
# hears (zero-shot on 100 real held-out clips: tempo 98%, instrument 99%, drums 100%); not the mode,
# which it hears at chance (the note above). Other scales: a JSON file {set: [labels]} (read_label_sets).
TOY_LABEL_SETS = {"tempo": ["slow", "fast"], "instrument": ["piano", "guitar", "organ", "flute", "bass"],
                  "drums": ["drums", "solo"]}


def read_label_sets(path):
    """{set name: [labels]} from a JSON file; UsageError (one line) when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            sets = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    if not (isinstance(sets, dict) and sets and all(
            isinstance(v, list) and len(v) >= 2 and all(isinstance(s, str) and s.strip() for s in v)
            for v in sets.values())):
        raise UsageError(f"{path}: expected {{\"set name\": [two or more labels], ...}}")
    return sets


def hear_labels(model, waves, sample_rate, label_sets=TOY_LABEL_SETS):
    """Per clip, {set: the label whose MuLan text embedding is nearest the clip's audio embedding}."""
    audio = embed_audio(model, waves, sample_rate)
    heard = {name: similarity(audio, embed_text(model, labels)).argmax(dim=1).tolist()
             for name, labels in label_sets.items()}
    return [{name: label_sets[name][k[i]] for name, k in heard.items()} for i in range(len(audio))]


def add_labels(prompt, heard, label_sets=TOY_LABEL_SETS):
    """`prompt` with the heard labels appended ("a tune for a rainy day, slow, organ, solo"), skipping
    each set of which the prompt already holds a label as a word: the user's words win.

    What `sample.py --describe` gives the generator, so that a continuation or an inpainted region
    keeps what the given clip sounds like without the prompt having to say it.
    """
    said = lambda label: re.search(rf"\b{re.escape(label.lower())}\b", prompt.lower()) is not None
    labels = [label for name, label in heard.items() if not any(said(x) for x in label_sets[name])]
    return ", ".join(([prompt.strip().rstrip(" .,;")] if prompt.strip() else []) + labels)


# ----------------------------------------------------------------------------------------------
# Training data: log-mels of the captioned clips and their tokenized text batches

def is_heldout(relpath, fraction):
    """A stable split by the audio path (relative to the manifest): held out for evaluation."""
    h = int(hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8], 16)
    return h % 10_000 < round(fraction * 10_000)


def split_entries(entries, manifest, fraction):
    """(train, held-out) entries of a manifest; clips without captions or tags are left out."""
    root = os.path.dirname(os.path.abspath(manifest))
    train, heldout = [], []
    for e in entries:
        if not data.text_entries(e, 1 << 20):
            continue
        (heldout if is_heldout(os.path.relpath(e["audio"], root), fraction) else train).append(e)
    return train, heldout


class ClipSet:
    """Clips of fixed window length as log-mels, and each clip's text batch (section 4.1), tokenized.

    mels: (N, 80, F) float16; ids, mask: (T, L) for all texts; owner[t] = clip of text t;
    texts_of[i] = indices of clip i's texts; captions_of[i] = indices of its long captions.
    """

    def __init__(self, entries, config, tokenizer, cache_dir=None, progress=True, group=64):

        self.window = int(round(config.window_seconds * data.MEL_SAMPLE_RATE))
        self.token_len, self.count = config.token_len, lambda s: len(tokenizer.sp.encode(s)) + 1  # + EOS
        self.entries, self.texts, self.owner, self.texts_of, self.captions_of, mels = [], [], [], [], [], []
        for g in tqdm(range(0, len(entries), group), desc="clips", disable=not progress, leave=False):
            # a group at a time, so that only the log-mels of the whole set stay in memory
            clips, _ = data.load_clips(entries[g:g + group], data.MEL_SAMPLE_RATE, config.window_seconds,
                                       cache_dir, progress=False)
            mels += [self._add(entry, wave) for entry, wave in clips]
        self.mels = torch.stack(mels) if mels else torch.zeros(0, data.MEL_BINS, self.window // data.MEL_HOP)
        self.ids, self.mask = tokenizer(self.texts, config.token_len)

    def _add(self, entry, wave):
        """Record one clip's texts; return its (80, F) float16 log-mel (window cut or zero-padded)."""
        i = len(self.entries)
        batch = data.text_entries(entry, self.token_len, self.count)
        long = list(entry.get("captions", [])) + list(entry.get("pseudo_captions", []))
        n_long = sum(1 for c in long if c and c.strip())                 # text_entries puts them first
        self.texts_of.append(list(range(len(self.texts), len(self.texts) + len(batch))))
        self.captions_of.append(self.texts_of[-1][:n_long])
        self.owner += [i] * len(batch)
        self.texts += batch
        self.entries.append(entry)
        wave = torch.from_numpy(np.pad(wave[:self.window], (0, max(0, self.window - len(wave)))))
        return data.log_mel(wave).half()

    def __len__(self):
        return len(self.mels)


def draw_batch(clips, batch_size, step, seed):
    """The batch of a step, a pure function of (seed, step): distinct clips, one text entry each
    (drawn uniformly from its text batch), and one random crop of 75-100% of the window.

    :return: mel (B, 80, F'), ids (B, L'), mask (B, L'), trimmed to the longest text.
    """
    rng = np.random.default_rng([seed, step])
    idx = rng.choice(len(clips), size=min(batch_size, len(clips)), replace=False)
    texts = [clips.texts_of[i][rng.integers(len(clips.texts_of[i]))] for i in idx]
    frames = clips.mels.shape[-1]
    crop = int(rng.integers(int(0.75 * frames), frames + 1))
    starts = rng.integers(0, frames - crop + 1, size=len(idx))
    mel = torch.stack([clips.mels[i, :, s:s + crop] for i, s in zip(idx, starts)]).float()
    ids, mask = clips.ids[texts], clips.mask[texts]
    L = int(mask.sum(1).max())
    return mel, ids[:, :L], mask[:, :L]


# ----------------------------------------------------------------------------------------------
# Retrieval accuracy (audio -> caption)

def chance_hit_rate(n_candidates, n_own, k):
    """P(a random ranking of n_candidates puts one of n_own right ones in its top k)."""
    miss = 1.0
    for j in range(min(k, n_candidates)):
        miss *= max(0.0, (n_candidates - n_own - j) / (n_candidates - j))
    return 1.0 - miss


@torch.no_grad()
def clip_embeddings(model, clips, batch_size=64):
    """(N, E) unit audio embeddings of a ClipSet's whole windows."""
    model.eval()
    return torch.cat([F.normalize(model.audio(clips.mels[i:i + batch_size].float()), dim=-1)
                      for i in range(0, len(clips), batch_size)])


@torch.no_grad()
def retrieval_accuracy(model, clips, ks=(1, 10)):
    """Audio -> caption retrieval over the clips' distinct long captions: a hit at k when one of
    the clip's own captions is among the k most similar. Returns hits and chance for each k."""
    audio = clip_embeddings(model, clips)                                # (N, E)
    captions = list(dict.fromkeys(clips.texts[t] for own in clips.captions_of for t in own))
    index = {c: j for j, c in enumerate(captions)}
    own = [{index[clips.texts[t]] for t in ts} for ts in clips.captions_of]
    ranked = similarity(audio, embed_text(model, captions)).argsort(dim=1, descending=True)
    out = {"clips": len(clips), "captions": len(captions)}
    for k in ks:
        hits = [bool(own[i] & set(ranked[i, :k].tolist())) for i in range(len(clips))]
        out[f"top{k}"] = float(np.mean(hits))
        out[f"chance_top{k}"] = float(np.mean([chance_hit_rate(len(captions), len(o), k) for o in own]))
    return out


# ----------------------------------------------------------------------------------------------
# Training

@dataclass
class TrainConfig:
    """Flags of `pseudolabel.py train` (the command line is generated from these fields)."""
    manifest: str = field(default=os.path.join(TOY_CORPUS, "manifest.jsonl"),
                          metadata={"help": "captioned clips (JSON Lines manifest)"})
    out: str = field(default="runs/mulan", metadata={"help": "folder for mulan.pt"})
    export_t5: str = field(default="", metadata={"help": "also write the text tower's T5 here (Hugging Face layout)"})
    scale: str = field(default="toy", metadata={"help": "toy or full (CONFIGS)"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "(clip, text) pairs per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam, cosine decay)"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps"})
    holdout: float = field(default=0.1, metadata={"help": "share of clips held out for evaluation"})
    extra_text: str = field(default="", metadata={"help": "more text for the tokenizer: a caption file "
                            "(default: heldout_captions.jsonl beside the manifest, when there)"})
    eval_every: int = field(default=250, metadata={"help": "steps between held-out retrieval checks (0: end only)"})
    cache_dir: str = field(default="data_cache", metadata={"help": "decoded-audio cache ('' for none)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)"})


def learning_rate(step, cfg):
    """Linear warm-up, then cosine decay to 0 at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def round_to_half_(model):
    """Round every weight to the nearest float16 value (what mulan.pt and the T5 export store)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def build_model(cfg, entries):
    """A fresh model: SentencePiece trained on the corpus's texts, then both towers."""
    config = CONFIGS[cfg.scale]
    extra = read_vocabulary(cfg.extra_text).all_texts() if cfg.extra_text else []
    spm_bytes = train_sentencepiece(tokenizer_sentences(entries, extra), config.spm_vocab_size)
    n_pieces = text.Tokenizer(spm_bytes).vocab_size
    config = dataclasses.replace(config, t5=dict(config.t5, vocab_size=n_pieces))
    torch.manual_seed(cfg.seed)
    return Mulan(config, spm_bytes)


def train(cfg: TrainConfig):
    """Train the two towers contrastively; write OUT/mulan.pt (and the T5 export). Returns metrics."""

    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    entries = data.read_manifest(cfg.manifest)
    train_entries, heldout_entries = split_entries(entries, cfg.manifest, cfg.holdout)
    if not train_entries:
        raise ValueError(f"{cfg.manifest}: no clips with captions or tags to train on")
    model = build_model(cfg, entries)
    cache = cfg.cache_dir or None
    clips = ClipSet(train_entries, model.config, model.tokenizer, cache)
    heldout = ClipSet(heldout_entries, model.config, model.tokenizer, cache) if heldout_entries else None
    print(f"mulan: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {model.tokenizer.vocab_size} "
          f"pieces, {len(clips)} training clips ({len(clips.texts)} texts), "
          f"{len(heldout) if heldout else 0} held out; {cfg.steps} steps of {cfg.batch_size}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    bar = tqdm(range(cfg.steps), desc="mulan", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg)
        model.train()
        mel, ids, mask = draw_batch(clips, cfg.batch_size, step, cfg.seed)
        audio = F.normalize(model.audio(mel), dim=-1)
        words = F.normalize(model.text(ids, mask), dim=-1)
        loss = info_nce(audio, words, model.logit_scale)
        if not math.isfinite(loss.item()):
            raise SystemExit(f"pseudolabel.py: loss is {loss.item()} at step {step}; stopped")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{1 / model.logit_scale.exp().item():.3f}")
        if heldout and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            tqdm.write(f"step {step + 1}: loss {loss.item():.3f}, held-out {json.dumps(retrieval_accuracy(model, heldout))}")
    bar.close()
    round_to_half_(model)
    metrics = {"steps": cfg.steps, "train_seconds": round(time.time() - t0, 1), "final_loss": loss.item(),
               "heldout": retrieval_accuracy(model, heldout) if heldout else {}}
    save_outputs(cfg, model, metrics)
    return metrics


def save_outputs(cfg, model, metrics):
    """OUT/mulan.pt, and the T5 directory when asked for (float16, as the weights now are)."""

    path = os.path.join(cfg.out, "mulan.pt")
    save_mulan(path, model, {"step": cfg.steps, "train_config": dataclasses.asdict(cfg), "metrics": metrics})
    print(f"wrote {path}: {json.dumps(metrics)}")
    if cfg.export_t5:
        text.save_t5(cfg.export_t5, model.spm_bytes, copy.deepcopy(model.text.t5).half())
        print(f"wrote the text tower's T5 to {cfg.export_t5}")


# ----------------------------------------------------------------------------------------------
# Caption vocabularies (section 3.5: LaMDA-LF and Rater-LF long-form sentences, Rater-SF tags)

LONG_MIN_WORDS = 5          # a text without a stated kind is long-form from this many words on,
                            # or when it ends as a sentence does (. ! ?)


class UsageError(ValueError):
    """A mistake in the command line or the input files; the message is one line."""


@dataclass
class Vocabulary:
    """Long-form captions (LaMDA-LF-like, K' = 3 per clip) and short-form tags (Rater-SF-like, 6)."""
    long: list = field(default_factory=list)
    short: list = field(default_factory=list)

    def add(self, text_, kind=""):
        text_ = str(text_).strip()
        if text_:
            sentence = len(text_.split()) >= LONG_MIN_WORDS or text_.endswith((".", "!", "?"))
            kind = kind if kind in ("long", "short") else ("long" if sentence else "short")
            getattr(self, kind).append(text_)

    def dedup(self):
        """Each caption once, first occurrence first (so it is embedded once)."""
        self.long, self.short = list(dict.fromkeys(self.long)), list(dict.fromkeys(self.short))
        return self

    def all_texts(self):
        return self.long + self.short


def _add_json_line(vocab, obj):
    """One JSON line of a vocabulary file: a manifest entry, a caption object, or a string."""
    if isinstance(obj, str):
        vocab.add(obj)
    elif isinstance(obj, dict) and "audio" in obj:            # a manifest: captions and tags
        for c in obj.get("captions") or []:
            vocab.add(c, "long")
        for t in obj.get("tags") or []:
            vocab.add(t, "short")
    elif isinstance(obj, dict) and isinstance(obj.get("text", obj.get("caption")), str):
        vocab.add(obj.get("text", obj.get("caption")), obj.get("kind", obj.get("form", "")))
    else:
        raise UsageError("expected a string, a manifest entry or an object with a \"text\" field")


def read_vocabulary(*paths):
    """A Vocabulary from files: JSON Lines (manifests: `captions` long, `tags` short; caption
    objects {"text", optional "kind": "long"|"short"}; strings) or plain text, one per line.
    Without a stated kind, a sentence (LONG_MIN_WORDS words or more, or a final . ! ?) is
    long-form, anything else a short-form tag."""
    vocab = Vocabulary()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read vocabulary ({e})") from None
        as_json = path.endswith((".jsonl", ".json"))
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                _add_json_line(vocab, json.loads(line)) if as_json else vocab.add(line)
            except (json.JSONDecodeError, UsageError) as e:
                raise UsageError(f"{path}:{number}: {getattr(e, 'msg', e)}") from None
    return vocab.dedup()


# ----------------------------------------------------------------------------------------------
# Step 2: every caption embedded once, in chunks, cached on disk as a .npy file

def model_fingerprint(model):
    """A hex digest of the model's config and weights (the cache key's model part)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def embed_vocabulary(model, texts, cache_dir, chunk=4096, progress=True):
    """The (M, E) float32 text embeddings of `texts` as a .npy file in cache_dir (its path).

    Written one chunk at a time with plain writes (no memory map), and read back the same way
    (`npy_chunks`), so memory stays at one chunk whatever M is. Keyed by the model and the texts.
    """

    key = hashlib.sha256(model_fingerprint(model).encode())
    for t in texts:
        key.update(t.encode("utf-8") + b"\0")
    path = os.path.join(cache_dir, f"mulan-text-{key.hexdigest()[:20]}.npy")
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (len(texts), model.config.embed_dim)}
        np.lib.format.write_array_header_1_0(f, header)
        for i in tqdm(range(0, len(texts), chunk), desc="caption embeddings", disable=not progress, leave=False):
            f.write(embed_text(model, texts[i:i + chunk]).numpy().astype("<f4").tobytes())
    os.replace(tmp, path)
    return path


def npy_chunks(path, chunk=16384):
    """Iterate (start row, (c, E) float32 tensor) over a 2-D float32 .npy file, chunk rows a time."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        rows, width = shape
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            block = np.fromfile(f, dtype=dtype, count=n * width).reshape(n, width)
            yield start, torch.from_numpy(block.astype(np.float32, copy=False))


# ----------------------------------------------------------------------------------------------
# Step 3: top K by cosine similarity, one vocabulary chunk at a time

def topk_chunked(queries, chunks, k, clip_block=2048):
    """The k most similar rows of a vocabulary to every query, keeping only a running top-k.

    :param queries: (N, E) unit vectors (clips).
    :param chunks: an iterable of (start, (c, E) unit-vector tensor): the vocabulary, in order.
    :return: scores (N, k) descending and indices (N, k) into the vocabulary (-1 and -inf where
        the vocabulary has fewer than k rows). Memory: N * k plus clip_block * c at a time.
    """
    N = len(queries)
    best_s = torch.full((N, k), -math.inf, dtype=queries.dtype)
    best_i = torch.full((N, k), -1, dtype=torch.long)
    for start, keys in chunks:
        keys = keys.to(queries.dtype)
        for a in range(0, N, clip_block):
            s = queries[a:a + clip_block] @ keys.t()                     # (nb, c)
            cs, ci = s.topk(min(k, s.shape[1]), dim=1)
            merged_s = torch.cat([best_s[a:a + clip_block], cs], dim=1)  # (nb, k + k')
            merged_i = torch.cat([best_i[a:a + clip_block], ci + start], dim=1)
            top, pos = merged_s.topk(k, dim=1)
            best_s[a:a + clip_block], best_i[a:a + clip_block] = top, merged_i.gather(1, pos)
    return best_s, best_i


def drop_own(top, own, k):
    """Remove each clip's own captions (vocabulary indices in own[i]) from its ranked list and
    keep the first k: (N, k + extra) -> (N, k), -1 padded."""
    out = np.full((len(top), k), -1, dtype=np.int64)
    for i, row in enumerate(top):
        kept = [j for j in row if j >= 0 and j not in own[i]][:k]
        out[i, :len(kept)] = kept
    return out


# ----------------------------------------------------------------------------------------------
# Step 4: K' of the top K, without replacement, with probability proportional to 1 / frequency

def caption_counts(top, vocab_size):
    """How many clips' top-K lists hold each caption: (M,) int64."""
    return np.bincount(top[top >= 0].ravel(), minlength=vocab_size)


def sample_inverse_frequency(top, counts, k_prime, rng):
    """Draw k_prime of each row's captions without replacement, each draw with probability
    proportional to 1 / counts[caption] among those left (section 3.5).

    The Gumbel-top-k trick (Kool et al. 2019): the k_prime largest log(w) + Gumbel noise are
    distributed exactly as k_prime successive weighted draws without replacement.
    :param top: (N, K) vocabulary indices (-1: none); :param counts: (M,) counts over all clips.
    :param rng: a numpy Generator. :return: (N, k_prime) indices in draw order (-1 when short).
    """
    valid = top >= 0
    log_w = np.where(valid, -np.log(np.maximum(counts[np.where(valid, top, 0)], 1)), -np.inf)
    keys = log_w + rng.gumbel(size=top.shape)                            # (N, K)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :k_prime]
    return np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(top, order, 1), -1)


# ----------------------------------------------------------------------------------------------
# Measurements: agreement with the toy corpus's true attributes, and label entropy

# The words of the toy vocabulary (toy_corpus.py), each a claim about one attribute of the audio.
CLAIM_WORDS = {
    "tempo": {"slow": "slow", "fast": "fast"},
    "instrument": {w: w for w in ("bass", "flute", "piano", "guitar", "organ")},
    "drums": {"drums": True, "drum": True, "solo": False},
    "mode": {"major": "major", "minor": "minor"},
}


def claims(caption):
    """{attribute: value} that a caption asserts through the toy vocabulary's words; an attribute
    claimed with two different values (e.g. 'piano and bass') is left out. 'Bass guitar' is the
    bass (the toy corpus's name for it), not a guitar."""
    words = set(re.findall(r"[a-z]+", caption.lower().replace("bass guitar", "bass")))
    out = {}
    for attribute, table in CLAIM_WORDS.items():
        values = {v for w, v in table.items() if w in words}
        if len(values) == 1:
            out[attribute] = values.pop()
    return out


def true_value(attributes, attribute):
    """The truth a claim is checked against (tempo None: a medium tempo, neither slow nor fast)."""
    if attribute == "drums":
        return bool(attributes.get("drums"))
    return attributes.get(attribute)


def agreement(labels, attributes):
    """Per attribute: the share of claims in the clips' labels that are true of the clip.

    :param labels: per clip, a list of captions; :param attributes: per clip, its true attributes.
    :return: {attribute: (share true, number of claims)}.
    """
    right, total = {a: 0 for a in CLAIM_WORDS}, {a: 0 for a in CLAIM_WORDS}
    for captions, attrs in zip(labels, attributes):
        for caption in captions:
            for attribute, value in claims(caption).items():
                total[attribute] += 1
                right[attribute] += value == true_value(attrs, attribute)
    return {a: (right[a] / total[a] if total[a] else float("nan"), total[a]) for a in CLAIM_WORDS}


def chance_agreement(labels, attributes, seed=0, shuffles=20):
    """Agreement when each clip's labels are checked against a random other clip's attributes
    (the labels' own distribution kept): the chance level of `agreement`."""
    rng = np.random.default_rng(seed)
    runs = [agreement(labels, [attributes[j] for j in rng.permutation(len(attributes))])
            for _ in range(shuffles)]
    return {a: float(np.mean([r[a][0] for r in runs])) for a in CLAIM_WORDS}


def label_entropy(index_lists):
    """Entropy (bits) of the distribution of assigned captions over all clips, and its 2^H."""
    flat = np.asarray([j for row in index_lists for j in row if j >= 0])
    if not len(flat):
        return {"entropy_bits": 0.0, "effective": 1.0, "distinct": 0}
    p = np.unique(flat, return_counts=True)[1] / len(flat)
    h = float(-(p * np.log2(p)).sum()) + 0.0        # + 0.0: no -0.0
    return {"entropy_bits": h, "effective": 2.0 ** h, "distinct": int(len(p))}


# ----------------------------------------------------------------------------------------------
# The pipeline: steps 1-5 over a manifest

@dataclass
class LabelConfig:
    """Flags of `pseudolabel.py label`."""
    manifest: str = field(default="", metadata={"help": "clips to label (JSON Lines manifest)", "required": True})
    out: str = field(default="", metadata={"help": "the labelled manifest to write", "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "mulan.pt from `train`"})
    vocab: list = field(default_factory=list, metadata={
        "help": "a caption vocabulary: a manifest (captions long, tags short), a JSON Lines file of "
                "{text, kind} or a text file; repeat for several (default: the toy corpus's "
                f"manifest and {HELDOUT_VOCAB})", "many": True})
    k: int = field(default=10, metadata={"help": "K, captions kept per clip by similarity"})
    long: int = field(default=3, metadata={"help": "K' long-form pseudo captions per clip"})
    short: int = field(default=6, metadata={"help": "K' short-form pseudo tags per clip"})
    keep_own: bool = field(default=False, metadata={"help": "let a clip be labelled with its own captions/tags"})
    cache_dir: str = field(default="data_cache", metadata={"help": "caption-embedding and audio cache"})
    seed: int = field(default=0, metadata={"help": "random seed of the K' draws"})


def embed_manifest_audio(model, entries, cache_dir=None, batch_size=16, progress=True):
    """Step 1 for every entry, streaming: (N, E) embeddings of the readable entries, their indices."""

    rows, kept, waves, skipped = [], [], [], []
    for i, entry in enumerate(tqdm(entries, desc="audio embeddings", disable=not progress, leave=False)):
        try:
            waves.append(data.load_track(entry["audio"], data.MEL_SAMPLE_RATE, cache_dir))
            kept.append(i)
        except data.AudioError as e:
            skipped.append(f"skipped {entry['audio']}: {e}")
        if len(waves) == batch_size or (i == len(entries) - 1 and waves):
            rows.append(embed_audio(model, waves, data.MEL_SAMPLE_RATE))
            waves = []
    for line in skipped:
        print(line, file=sys.stderr)
    return (torch.cat(rows) if rows else torch.zeros(0, model.config.embed_dim)), kept


def own_indices(entries, texts):
    """Per clip, the vocabulary indices of its own captions and tags (to be excluded)."""
    index = {t: j for j, t in enumerate(texts)}
    return [{index[t] for t in list(e.get("captions") or []) + list(e.get("tags") or []) if t in index}
            for e in entries]


def assign(model, audio_emb, texts, n_pick, own, cfg, rng):
    """Steps 2-4 for one vocabulary: (picked (N, n_pick), greedy top n_pick, top K) indices."""
    if not texts or not n_pick:
        empty = np.full((len(audio_emb), 0), -1, dtype=np.int64)
        return empty, empty, empty
    path = embed_vocabulary(model, texts, cfg.cache_dir or "data_cache")
    extra = max((len(o) for o in own), default=0)
    _, top = topk_chunked(audio_emb, npy_chunks(path), min(cfg.k + extra, len(texts)))
    top = drop_own(top.numpy(), own, min(cfg.k, len(texts))) if extra else top.numpy()
    picked = sample_inverse_frequency(top, caption_counts(top, len(texts)), n_pick, rng)
    return picked, top[:, :n_pick], top


def label_manifest(cfg: LabelConfig, progress=True):
    """Steps 1-5: write cfg.out with `pseudo_captions` and `pseudo_tags`; return a report."""
    model = load_mulan(cfg.model)
    entries = data.read_manifest(cfg.manifest)
    vocab = read_vocabulary(*cfg.vocab)
    audio_emb, kept = embed_manifest_audio(model, entries, cfg.cache_dir or None, progress=progress)
    clips = [entries[i] for i in kept]
    report, assigned = {"clips": len(clips), "skipped": len(entries) - len(clips)}, {}
    for n, (kind, texts, n_pick) in enumerate((("long", vocab.long, cfg.long), ("short", vocab.short, cfg.short))):
        own = own_indices(clips, texts) if not cfg.keep_own else [set()] * len(clips)
        picked, greedy, _ = assign(model, audio_emb, texts, n_pick, own, cfg, np.random.default_rng([cfg.seed, n]))
        assigned[kind] = ([[texts[j] for j in row if j >= 0] for row in picked],
                          [[texts[j] for j in row if j >= 0] for row in greedy])
        report[kind] = {"vocabulary": len(texts), "per_clip": n_pick, "sampled": label_entropy(picked),
                        f"top{n_pick}": label_entropy(greedy)}
    for i, entry in enumerate(clips):
        entry["pseudo_captions"], entry["pseudo_tags"] = assigned["long"][0][i], assigned["short"][0][i]
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    data.write_manifest(cfg.out, entries)
    if clips and all(isinstance(e.get("attributes"), dict) for e in clips):
        report["agreement"] = attribute_report(assigned, [e["attributes"] for e in clips], cfg.seed)
    return report


def attribute_report(assigned, attributes, seed):
    """Agreement of the sampled and of the greedy labels with the true attributes, and chance."""
    sampled = [a + b for a, b in zip(assigned["long"][0], assigned["short"][0])]
    greedy = [a + b for a, b in zip(assigned["long"][1], assigned["short"][1])]
    chance = chance_agreement(sampled, attributes, seed)
    top = agreement(greedy, attributes)
    return {a: {"agree": round(share, 4), "claims": n, "chance": round(chance[a], 4),
                "agree_greedy": round(top[a][0], 4)}
            for a, (share, n) in agreement(sampled, attributes).items()}


# ----------------------------------------------------------------------------------------------
# Command line

@dataclass
class EvalConfig:
    """Flags of `pseudolabel.py eval`."""
    manifest: str = field(default=os.path.join(TOY_CORPUS, "manifest.jsonl"),
                          metadata={"help": "captioned clips (JSON Lines manifest)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "mulan.pt from `train`"})
    all: bool = field(default=False, metadata={"help": "every clip, not only those held out from training"})
    cache_dir: str = field(default="data_cache", metadata={"help": "decoded-audio cache ('' for none)"})


def read_phrasings(path):
    """(texts, attributes) of a caption file whose lines carry `attributes` (heldout_captions.jsonl)."""
    texts, attributes = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line) if line.strip() else None
            if isinstance(obj, dict) and isinstance(obj.get("attributes"), dict):
                texts.append(obj.get("caption", obj.get("text")))
                attributes.append(obj["attributes"])
    return texts, attributes


def phrasing_accuracy(model, clips, path, seed=0, shuffles=20):
    """Zero-shot classification with phrasings never trained on: for each clip, the most similar
    caption of `path`; per attribute, how often that caption's label is the clip's true value
    (chance: the same choices checked against the clips shuffled)."""
    texts, labels = read_phrasings(path)
    best = similarity(clip_embeddings(model, clips), embed_text(model, texts)).argmax(dim=1).tolist()
    truth = [e["attributes"] for e in clips.entries]
    rng = np.random.default_rng(seed)
    hit = lambda order, a: np.mean([labels[b].get(a) == true_value(truth[j], a) for b, j in zip(best, order)])
    out = {}
    for a in ("tempo", "instrument", "drums", "mode"):
        chance = np.mean([hit(rng.permutation(len(truth)), a) for _ in range(shuffles)])
        out[a] = {"accuracy": round(float(hit(range(len(truth)), a)), 4), "chance": round(float(chance), 4)}
    return {"phrasings": len(texts), **out}


def evaluate_retrieval(cfg: EvalConfig):
    """Audio -> caption retrieval (top 1, top 10, and chance) on the held-out clips of a manifest;
    with true attributes and held-out phrasings beside the manifest, zero-shot attribute accuracy."""
    model = load_mulan(cfg.model)
    entries = data.read_manifest(cfg.manifest)
    fraction = model.checkpoint.get("train_config", {}).get("holdout", 0.1)
    train_entries, heldout = split_entries(entries, cfg.manifest, fraction)
    chosen = [e for e in (train_entries + heldout if cfg.all else heldout) if e.get("captions")]
    if not chosen:
        raise UsageError(f"{cfg.manifest}: no {'' if cfg.all else 'held-out '}clips with captions")
    clips = ClipSet(chosen, model.config, model.tokenizer, cfg.cache_dir or None)
    report = retrieval_accuracy(model, clips)
    phrasings = os.path.join(os.path.dirname(os.path.abspath(cfg.manifest)), HELDOUT_VOCAB)
    if os.path.isfile(phrasings) and all(isinstance(e.get("attributes"), dict) for e in clips.entries):
        report["heldout_phrasings"] = phrasing_accuracy(model, clips, phrasings)
    return report


def build_parser():
    parser = data.OneLineParser(prog="pseudolabel.py", description=(
        "A small MuLan-style audio-text model and the pseudo-labelling of section 3.5."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_fields(sub.add_parser("train", help="train the two towers (and export the toy T5)", description=(
        "Train the audio and text towers contrastively on a manifest's captioned clips; write OUT/mulan.pt "
        "and, with --export-t5, the text tower's T5 as a Hugging Face-format directory (text.load_t5 reads "
        "it). A share of the clips (--holdout) is kept out for the retrieval check.")), TrainConfig)
    add_fields(sub.add_parser("label", help="write pseudo labels into a manifest (section 3.5)", description=(
        "Embed each clip (10 s windows averaged), rank every vocabulary caption by cosine similarity, keep "
        "the top K, draw K' of them with probability inverse to their frequency in all clips' top-K lists, "
        "and write them as pseudo_captions (long-form) and pseudo_tags (short-form). Prints entropies and, "
        "when clips carry true attributes, agreement against chance.")), LabelConfig)
    add_fields(sub.add_parser("eval", help="audio -> caption retrieval accuracy on held-out clips", description=(
        "Audio -> caption retrieval (top 1 and top 10, and chance) on the clips of a manifest that "
        "training held out; with the toy corpus, also zero-shot attribute accuracy with its held-out "
        "phrasings.")), EvalConfig)
    return parser


def _need_file(path, what):
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")


def check_train(cfg):
    """Train flags that argparse cannot check; fills the tokenizer's extra text default."""
    _need_file(cfg.manifest, "--manifest")
    if cfg.scale not in CONFIGS:
        raise UsageError(f"--scale must be one of {', '.join(CONFIGS)}")
    if cfg.steps < 1 or cfg.batch_size < 2 or cfg.warmup < 0 or cfg.lr <= 0:
        raise UsageError("--steps must be >= 1, --batch-size >= 2, --warmup >= 0 and --lr > 0")
    if not 0 <= cfg.holdout < 1:
        raise UsageError("--holdout must be in [0, 1)")
    default_extra = os.path.join(os.path.dirname(os.path.abspath(cfg.manifest)), HELDOUT_VOCAB)
    if not cfg.extra_text and os.path.isfile(default_extra):
        cfg.extra_text = default_extra
    if cfg.extra_text:
        _need_file(cfg.extra_text, "--extra-text")
    return cfg


def check_label(cfg):
    """Label flags that argparse cannot check; fills the default vocabularies."""
    _need_file(cfg.manifest, "--manifest")
    _need_file(cfg.model, "--model")
    if cfg.k < 1 or cfg.long < 0 or cfg.short < 0 or max(cfg.long, cfg.short) > cfg.k:
        raise UsageError("need --k >= 1 and 0 <= --long, --short <= --k")
    if not cfg.vocab:
        cfg.vocab = [os.path.join(TOY_CORPUS, "manifest.jsonl"), os.path.join(TOY_CORPUS, HELDOUT_VOCAB)]
    for path in cfg.vocab:
        _need_file(path, "--vocab")
    if os.path.abspath(cfg.out) == os.path.abspath(cfg.manifest):
        raise UsageError("--out must not overwrite --manifest")
    return cfg


def main(argv=None):
    """Entry point (train.py calls main(["train", ...])); user mistakes exit 2 with one line."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        if command == "train":
            return train(check_train(TrainConfig(**args)))
        if command == "label":
            report = label_manifest(check_label(LabelConfig(**args)))
        else:
            _need_file(args["model"], "--model")
            _need_file(args["manifest"], "--manifest")
            report = evaluate_retrieval(EvalConfig(**args))
        print(json.dumps(report, indent=1))
        return report
    except (UsageError, data.ManifestError, MulanLoadError, text.T5LoadError, OSError) as e:
        parser.exit(2, f"pseudolabel.py: error: {e}\n")


if __name__ == "__main__":
    main()
