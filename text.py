"""
The frozen T5 text encoder that conditions Noise2Music (section 3.4 of the paper), in plain PyTorch.

    "We adopt the T5 encoder (Raffel et al., 2020) and use the non-pooled token embedding
     sequence as text prompt representation to condition the diffusion models."

Every text-aware stage (wave generator, wave cascader, spec generator) cross-attends to
`encoder(ids, mask)`, a (B, L, D) sequence with D = encoder.config.d_model, L = 64 or 96 tokens
(Table 8). The paper does not say which T5 it used (docs/paper-notes.md); D sets the width of the
cross-attention keys and values, so the choice is the user's: any Hugging Face-format T5 directory
works, and the toy scale runs through this same code with a small T5 of its own.

What is here, top to bottom:
- `T5Config`, `T5Encoder`: the encoder half of T5 (Raffel et al. 2020, section 2.1), in both
  variants: the original T5 (ReLU feed-forward) and T5 v1.1 / Flan-T5 (gated-GELU feed-forward,
  Shazeer 2020). It follows transformers' `T5EncoderModel` and gives the same `last_hidden_state`
  (tests/test_text.py checks this against fixtures that transformers made). The T5 particulars:
    * pre-norm residual blocks; the norm is T5's RMS layer norm: no mean subtraction, no bias;
    * no 1/sqrt(d_kv) scaling of the attention logits (T5 folds it into the init of q);
    * no absolute positions: a learned bias per (head, bucket of relative position) is added to
      the logits. The bias table lives in the first layer only and all layers share it;
    * the embedding is not scaled by sqrt(d_model).
  One departure in layout, not in maths: q, k, v are stacked in one matrix, and so are the gated
  wi_0, wi_1 (one matmul each); `checkpoint_layout` maps them to and from the checkpoint names.
- `Tokenizer`: SentencePiece ids, then EOS (id 1), padded with 0 (T5's pad id) to `max_len`;
  the ids of transformers' SentencePiece-based ("slow") T5Tokenizer.
- Checkpoints: `load_t5(dir)` / `save_t5(dir, ...)` read and write the Hugging Face layout
  (config.json, model.safetensors or pytorch_model.bin, spiece.model). The safetensors reader
  and writer are written here (an 8-byte header length, a JSON header, raw little-endian bytes),
  so no extra package is needed and safetensors never go through pickle; pytorch_model.bin is
  read with torch.load(weights_only=True).
- `EmbeddingCache`: the encoder is frozen, so each distinct caption is encoded once.

Simplifications (all deliberate; the encoder is frozen and only ever run for inference):
- no dropout anywhere, and only the encoder: decoder weights in a checkpoint are ignored;
- one dtype for every weight; transformers keeps the feed-forward `wo` in float32 under half
  precision, we do not. float32 and bfloat16 are the supported dtypes; float16 runs, but T5 v1.1
  activations are known to overflow in it;
- the tokenizer does not parse special-token strings such as "</s>" or "<extra_id_0>" inside a
  caption (transformers turns them into their ids; here they are ordinary text). transformers'
  tokenizers-backed T5Tokenizer (the "fast" one, the only one in 5.x) splits on every Unicode
  space before SentencePiece sees the text; with T5's own spiece.model (NFKC) that changes
  nothing, with a model trained without normalisation it can differ on tabs and no-break spaces;
- the cache lives in memory, for one process;
- little-endian hosts only (every platform that PyTorch ships for).
"""
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
import sentencepiece


class T5LoadError(ValueError):
    """A T5 checkpoint that cannot be loaded. The message is one line: the file, then the problem."""


# -----------------------------------------------------------------------------
# config

@dataclass
class T5Config:
    """The fields of a Hugging Face T5 config.json that the encoder needs; defaults are t5-small's."""
    vocab_size: int = 32128
    d_model: int = 512                        # D: width of the residual stream and of the output
    d_kv: int = 64                            # width of one attention head
    d_ff: int = 2048                          # hidden width of the feed-forward block
    num_layers: int = 6                       # encoder blocks
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"           # "relu" (T5) or "gated-gelu" (T5 v1.1, Flan-T5)
    layer_norm_epsilon: float = 1e-6

# The public checkpoints (vocab_size 32128, d_kv 64 but for t5-3b/11b), encoder parameters with
# the 32128 x D embedding included:
#   name                  D     layers heads d_ff   feed-forward  encoder params
#   t5-small              512   6      8     2048   relu          35M
#   t5-base               768   12     12    3072   relu          110M
#   t5-large              1024  24     16    4096   relu          335M
#   t5-v1_1-small         512   8      6     1024   gated-gelu    35M   (flan-t5-small alike)
#   t5-v1_1-base          768   12     12    2048   gated-gelu    110M  (flan-t5-base alike)
#   t5-v1_1-large         1024  24     16    2816   gated-gelu    341M  (flan-t5-large alike)
#   t5-v1_1-xl            2048  24     32    5120   gated-gelu    1.2B  (flan-t5-xl alike)
#   t5-v1_1-xxl           4096  24     64    10240  gated-gelu    4.8B  (Imagen's text encoder)

FEED_FORWARDS = ("relu", "gated-gelu")
_FEED_FORWARD_ALIASES = {  # transformers accepts "gated-" + any activation name; these are GELU-tanh
    "gated-gelu_new": "gated-gelu", "gated-gelu_pytorch_tanh": "gated-gelu"}
_MAX_SIZE = 1 << 24        # bound on any integer field, so that size arithmetic stays cheap


def _feed_forward(raw):
    """The feed-forward variant of a raw config.json dict, as transformers reads it."""
    name = raw.get("feed_forward_proj")
    if name is None and "dense_act_fn" in raw:  # some configs spell it as two fields
        name = ("gated-" if raw.get("is_gated_act") else "") + str(raw["dense_act_fn"])
    name = name if name is not None else "relu"
    return _FEED_FORWARD_ALIASES.get(name, name)


def config_from_dict(raw, where="config.json"):
    """A T5Config from a parsed config.json; T5LoadError (naming `where`) for anything unsupported."""
    if not isinstance(raw, dict):
        raise T5LoadError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("model_type", "t5") not in ("t5", "mt5"):   # umt5, longt5... differ in their attention
        raise T5LoadError(f"{where}: model_type {raw['model_type']!r} is not a T5 encoder (expected 't5' or 'mt5')")
    fields = {}
    for name, default in asdict(T5Config()).items():
        value = raw.get(name, default)
        if name == "feed_forward_proj":
            value = _feed_forward(raw)
            if value not in FEED_FORWARDS:
                raise T5LoadError(f"{where}: unknown feed_forward_proj {value!r} (supported: relu, gated-gelu)")
        elif name == "layer_norm_epsilon":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise T5LoadError(f"{where}: layer_norm_epsilon must be a number in (0, 1), got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIZE:
            raise T5LoadError(f"{where}: {name} must be an integer in [1, {_MAX_SIZE}], got {value!r}")
        fields[name] = value
    config = T5Config(**fields)
    # the log-spaced buckets need max_exact = num_buckets // 4 >= 1 and max_distance > max_exact
    if config.relative_attention_num_buckets < 4 or \
            config.relative_attention_max_distance <= config.relative_attention_num_buckets // 4:
        raise T5LoadError(f"{where}: relative_attention_num_buckets must be >= 4 and "
                          f"relative_attention_max_distance > num_buckets / 4")
    return config


def config_to_dict(config):
    """The config.json of an encoder-only checkpoint that transformers' T5EncoderModel also loads."""
    gated = config.feed_forward_proj == "gated-gelu"
    return {"architectures": ["T5EncoderModel"], "model_type": "t5", **asdict(config),
            "dense_act_fn": "gelu_new" if gated else "relu", "is_gated_act": gated,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def num_parameters(config):
    """Encoder parameters implied by a config (arithmetic only, so it is safe on absurd configs)."""
    D, inner = config.d_model, config.num_heads * config.d_kv
    n_ff = 3 if config.feed_forward_proj == "gated-gelu" else 2           # wi_0, wi_1, wo or wi, wo
    per_block = 4 * D * inner + n_ff * D * config.d_ff + 2 * D           # q, k, v, o; ff; 2 norms
    return config.vocab_size * D + config.relative_attention_num_buckets * config.num_heads \
        + config.num_layers * per_block + D


# -----------------------------------------------------------------------------
# the encoder

class RMSNorm(nn.Module):
    """T5's layer norm: x / rms(x) * weight, no mean subtraction, no bias; statistics in float32."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
        return self.weight * x


class Attention(nn.Module):
    """Multi-head self-attention with T5's additive bias and no 1/sqrt(d_kv) scaling."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv      # need not equal d_model
        # T5's q, k and v stacked in one matrix, so that one matmul computes all three (as nanoGPT)
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x, bias):
        B, L, _ = x.shape                                                      # x (B, L, D)
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.d_kv).permute(2, 0, 3, 1, 4)  # (B, H, L, d_kv)
        # bias (B, H, L, L): relative position bias plus the padding mask; scale=1: T5 does not scale
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # (B, H, L, d_kv)
        return self.o(y.transpose(1, 2).reshape(B, L, self.n_head * self.d_kv))


class FeedForward(nn.Module):
    """relu: wo(relu(wi x)) (T5); gated-gelu: wo(gelu(wi_0 x) * wi_1 x) (T5 v1.1, Shazeer 2020)."""

    def __init__(self, config):
        super().__init__()
        self.gated = config.feed_forward_proj == "gated-gelu"
        n_in = 2 if self.gated else 1                # gated: wi_0 and wi_1 stacked in one matrix
        self.wi = nn.Linear(config.d_model, n_in * config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x):
        h = self.wi(x)                                           # (B, L, d_ff) or (B, L, 2 d_ff)
        if self.gated:  # GELU in its tanh approximation, transformers' "gelu_new"
            gate, linear = h.chunk(2, dim=-1)
            return self.wo(F.gelu(gate, approximate="tanh") * linear)
        return self.wo(F.relu(h))


class Block(nn.Module):
    """One pre-norm encoder block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ff_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ff = FeedForward(config)

    def forward(self, x, bias):
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.ff(self.ff_norm(x))


def relative_position_bucket(relative_position, num_buckets, max_distance):
    """T5's bidirectional bucketing of (key position - query position), as in Mesh TensorFlow.

    Half of the buckets are for keys after the query, half for keys before. In each half, distances
    below max_exact = num_buckets / 4 get a bucket each; larger ones share log-spaced buckets up to
    max_distance, and everything farther shares the last bucket. The float32 arithmetic follows
    transformers' operation for operation, so that truncation lands on the same bucket.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (half - max_exact)).long()   # (distance 0 gives -inf: unused)
    far = far.clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class T5Encoder(nn.Module):
    """T5's encoder stack: ids (B, L), mask (B, L) -> last_hidden_state (B, L, D)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        # (buckets, H): the first layer's table, whose bias every layer adds
        self.relative_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def position_bias(self, L):
        """(1, H, L, L): the learned bias for each head, query position and key position."""
        position = torch.arange(L, device=self.relative_bias.weight.device)
        relative = position[None, :] - position[:, None]                        # (L, L) key - query
        bucket = relative_position_bucket(relative, self.config.relative_attention_num_buckets,
                                          self.config.relative_attention_max_distance)
        return self.relative_bias(bucket).permute(2, 0, 1)[None]                 # (1, H, L, L)

    def forward(self, ids, mask):
        """
        :param ids: the (B, L) long token ids, as `Tokenizer` gives them.
        :param mask: the (B, L) bool (or 0/1) mask, True at real tokens; padded keys are ignored.
        :return: the (B, L, D) non-pooled token embeddings (padded positions hold values too,
                 as in transformers; downstream attention must use `mask`).
        """
        x = self.embed(ids)                                                      # (B, L, D)
        pad = (~mask.bool())[:, None, None, :]                                   # (B, 1, 1, L)
        # a large negative number rather than -inf, as transformers does, so no row can be all -inf
        bias = self.position_bias(ids.shape[1]).to(x.dtype).masked_fill(pad, torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, bias)                                                   # bias (B, H, L, L)
        return self.final_norm(x)


def checkpoint_layout(config):
    """{our parameter: [(name, shape) of the Hugging Face checkpoint tensors it is made of]}.
    Where there are several (our stacked qkv and gated wi), they are stacked along dim 0."""
    D, inner, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    layout = {"embed.weight": [("shared.weight", (config.vocab_size, D))],
              "relative_bias.weight": [("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                        (config.relative_attention_num_buckets, config.num_heads))],
              "final_norm.weight": [("encoder.final_layer_norm.weight", (D,))]}
    wi = ("wi_0", "wi_1") if config.feed_forward_proj == "gated-gelu" else ("wi",)
    for i in range(config.num_layers):
        ours, hf = f"blocks.{i}", f"encoder.block.{i}.layer"
        layout[f"{ours}.attn_norm.weight"] = [(f"{hf}.0.layer_norm.weight", (D,))]
        layout[f"{ours}.attn.qkv.weight"] = [(f"{hf}.0.SelfAttention.{p}.weight", (inner, D)) for p in "qkv"]
        layout[f"{ours}.attn.o.weight"] = [(f"{hf}.0.SelfAttention.o.weight", (D, inner))]
        layout[f"{ours}.ff_norm.weight"] = [(f"{hf}.1.layer_norm.weight", (D,))]
        layout[f"{ours}.ff.wi.weight"] = [(f"{hf}.1.DenseReluDense.{p}.weight", (d_ff, D)) for p in wi]
        layout[f"{ours}.ff.wo.weight"] = [(f"{hf}.1.DenseReluDense.wo.weight", (D, d_ff))]
    return layout


def state_from_checkpoint(config, get):
    """Our state dict from `get(name)`, which returns a Hugging Face checkpoint tensor."""
    return {ours: torch.cat([get(name) for name, _ in parts]) for ours, parts in checkpoint_layout(config).items()}


def checkpoint_from_state(config, state):
    """{Hugging Face checkpoint name: tensor} from our state dict (the inverse of the above)."""
    tensors = {}
    for ours, parts in checkpoint_layout(config).items():
        pieces = state[ours].split([shape[0] for _, shape in parts])
        tensors.update({name: piece.contiguous() for (name, _), piece in zip(parts, pieces)})
    return tensors


# -----------------------------------------------------------------------------
# tokenizer

class Tokenizer:
    """T5's tokenizer: SentencePiece ids, then EOS; truncated and padded to a fixed length."""
    pad_id = 0
    eos_id = 1

    def __init__(self, model_proto):
        """:param model_proto: the bytes of a SentencePiece model (spiece.model) with pad 0, EOS 1."""
        self.model_proto = bytes(model_proto)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        if (self.sp.pad_id(), self.sp.eos_id()) != (self.pad_id, self.eos_id):
            raise ValueError(f"SentencePiece model has pad id {self.sp.pad_id()} and EOS id "
                             f"{self.sp.eos_id()}; T5 needs pad 0 and EOS 1")

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def __call__(self, texts, max_len):
        """
        :param texts: a list of B strings.
        :param max_len: L, the fixed output length; longer texts lose their tail, never their EOS.
        :return: ids (B, L) long, padded with 0; mask (B, L) bool, True at real tokens (EOS included).
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        lengths = torch.zeros(len(texts), 1, dtype=torch.long)
        for i, pieces in enumerate(self.sp.encode(list(texts))):
            row = pieces[:max_len - 1] + [self.eos_id]
            ids[i, :len(row)] = torch.tensor(row)
            lengths[i] = len(row)
        mask = torch.arange(max_len)[None, :] < lengths                       # (B, L)
        return ids, mask


# -----------------------------------------------------------------------------
# safetensors, read and written here

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_MAX_HEADER = 100 << 20        # the safetensors format's own limit on the JSON header


def _as_bytes(t):
    """A 1-D uint8 view of a contiguous tensor's memory (works for every dtype, bfloat16 too)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


class SafetensorsFile:
    """The index of a .safetensors file, every field checked against the file size; tensors read on demand."""

    def __init__(self, path):
        self.path = path
        try:
            header, size = self._read_header()
        except OSError as e:
            raise T5LoadError(f"{path}: cannot read ({e.strerror or e})") from None
        self.entries = self._check(header, size - self.data_start)

    def _read_header(self):
        """The parsed JSON header and the file size."""
        path, size = self.path, os.path.getsize(self.path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise T5LoadError(f"{path}: {size} bytes, too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)        # header length, 8 bytes little-endian
            if n > min(size - 8, _MAX_HEADER):
                raise T5LoadError(f"{path}: header length {n} does not fit in the file ({size} bytes); "
                                  f"truncated or not safetensors")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise T5LoadError(f"{path}: malformed JSON header ({e})") from None
        self.data_start = 8 + n
        return header, size

    def _check(self, header, data_size):
        """{name: (dtype, shape, begin, end)}, or T5LoadError on any field out of order."""
        if not isinstance(header, dict):
            raise T5LoadError(f"{self.path}: header is not a JSON object")
        entries = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype_name, shape, (begin, end) = e["dtype"], e["shape"], e["data_offsets"]
                ok = all(type(d) is int and d >= 0 for d in shape) and type(begin) is int and type(end) is int
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise T5LoadError(f"{self.path}: malformed header entry for tensor {name!r}")
            if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
                raise T5LoadError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
            dtype = _SAFETENSORS_DTYPES[dtype_name]
            if not 0 <= begin <= end <= data_size:
                raise T5LoadError(f"{self.path}: tensor {name!r} lies at bytes {begin}-{end}, past the end of the "
                                  f"data ({data_size} bytes); the file is truncated")
            nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            if nbytes != end - begin:
                raise T5LoadError(f"{self.path}: tensor {name!r} of shape {shape} {dtype_name} needs {nbytes} "
                                  f"bytes but spans {end - begin}")
            entries[name] = (dtype, tuple(shape), begin, end)
        spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:             # two tensors sharing bytes: a malformed or crafted file
                raise T5LoadError(f"{self.path}: tensors {first!r} and {second!r} overlap (bytes {begin}-{end})")
        return entries

    def shapes(self):
        return {name: e[1] for name, e in self.entries.items()}

    def read(self, name):
        """The tensor `name`, read straight into its own memory."""
        dtype, shape, begin, end = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            got = f.readinto(memoryview(_as_bytes(out).numpy()))
        if got != end - begin:
            raise T5LoadError(f"{self.path}: tensor {name!r} cut short ({got} of {end - begin} bytes)")
        return out


def read_safetensors(path):
    """Every tensor of a .safetensors file, {name: tensor} on the CPU."""
    f = SafetensorsFile(path)
    return {name: f.read(name) for name in f.entries}


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as a .safetensors file (tensors in name order, header padded to 8 bytes)."""
    names = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
    header, offset = {}, 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path + ".tmp", "wb") as f:              # written whole, then renamed into place
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name in sorted(tensors):
            f.write(memoryview(_as_bytes(tensors[name].detach().cpu()).numpy()))
    os.replace(path + ".tmp", path)


# -----------------------------------------------------------------------------
# pytorch_model.bin, sharded checkpoints

class TorchFile:
    """A pytorch_model.bin, read with torch.load(weights_only=True), memory-mapped where possible."""

    def __init__(self, path):
        self.path = path
        state = self._load()
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise T5LoadError(f"{path}: not a state dict of tensors")
        self.tensors = state

    def _load(self):
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            pass                      # files in the legacy (non-zip) format cannot be memory-mapped
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            problem = (str(e).strip().splitlines() or [""])[0][:200]
            raise T5LoadError(f"{self.path}: cannot read ({type(e).__name__}: {problem})") from None

    def shapes(self):
        return {name: tuple(t.shape) for name, t in self.tensors.items()}

    def read(self, name):
        return self.tensors[name]


class ShardedFiles:
    """A checkpoint split in shards by a *.index.json ({"weight_map": {name: shard file}})."""

    def __init__(self, index_path, open_shard):
        self.path = index_path
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise T5LoadError(f"{index_path}: malformed index ({type(e).__name__}: {e})") from None
        folder = os.path.dirname(index_path)
        # only the shards that hold encoder tensors are opened
        wanted = {s for name, s in weight_map.items() if name.startswith("encoder.") or name == "shared.weight"}
        self.files = {}
        for shard in shard_names:
            if shard in wanted:
                path = os.path.join(folder, os.path.basename(str(shard)))
                if not os.path.isfile(path):
                    raise T5LoadError(f"{path}: shard listed in {os.path.basename(index_path)} not found")
                self.files[shard] = open_shard(path)
        self.owner = {name: self.files[s] for name, s in weight_map.items() if s in self.files}

    def shapes(self):
        shapes = {}
        for f in self.files.values():
            shapes.update(f.shapes())
        return {name: shapes[name] for name in self.owner if name in shapes}

    def read(self, name):
        return self.owner[name].read(name)


WEIGHT_FILES = (("model.safetensors", SafetensorsFile), ("pytorch_model.bin", TorchFile),
                ("model.safetensors.index.json", lambda p: ShardedFiles(p, SafetensorsFile)),
                ("pytorch_model.bin.index.json", lambda p: ShardedFiles(p, TorchFile)))


def _open_weights(directory):
    """The first weight file found in `directory`, opened (headers only), and its total size in bytes."""
    for name, opener in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            f = opener(path)
            paths = [g.path for g in f.files.values()] if isinstance(f, ShardedFiles) else [path]
            return f, sum(os.path.getsize(p) for p in paths)
    raise T5LoadError(f"{directory}: no weights found (model.safetensors or pytorch_model.bin)")


def read_encoder_weights(directory, config, device="cpu", dtype=torch.float32):
    """{our parameter name: tensor}: the encoder half of the checkpoint in `directory`, checked
    against `config` before anything is allocated, then cast to `dtype` on `device` one by one."""
    f, file_bytes = _open_weights(directory)
    need = num_parameters(config) * 2        # at least 2 bytes a parameter, whatever the dtype
    if need > file_bytes:
        raise T5LoadError(f"{f.path}: config.json implies {num_parameters(config):,} encoder parameters, "
                          f"more than the {file_bytes:,}-byte weights can hold")
    available = f.shapes()
    if config.num_layers > len(available):   # a cheap bound before listing 8 tensors a layer
        raise T5LoadError(f"{f.path}: config.json implies {config.num_layers} layers, more than the "
                          f"{len(available)} tensors in the file")
    # encoder-only checkpoints may name the embedding this way instead
    alias = {} if "shared.weight" in available else {"shared.weight": "encoder.embed_tokens.weight"}
    for parts in checkpoint_layout(config).values():
        for name, shape in parts:
            name = alias.get(name, name)
            if name not in available:
                raise T5LoadError(f"{f.path}: missing tensor {name}")
            if available[name] != shape:
                raise T5LoadError(f"{f.path}: tensor {name} has shape {list(available[name])}, "
                                  f"config.json implies {list(shape)}")

    def get(name):
        tensor = f.read(alias.get(name, name))
        if not tensor.is_floating_point():
            raise T5LoadError(f"{f.path}: tensor {name} has dtype {tensor.dtype}, expected a float type")
        return tensor.to(device=device, dtype=dtype)
    return state_from_checkpoint(config, get)


# -----------------------------------------------------------------------------
# loading and saving a checkpoint directory

def read_config(path):
    """A T5Config from a config.json file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise T5LoadError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise T5LoadError(f"{path}: not valid JSON ({e})") from None
    return config_from_dict(raw, where=path)


def read_tokenizer(path, config):
    """The Tokenizer of a spiece.model file, checked against the model's vocabulary."""
    try:
        with open(path, "rb") as f:
            tokenizer = Tokenizer(f.read())
    except FileNotFoundError:
        raise T5LoadError(f"{path}: not found") from None
    except (OSError, RuntimeError, ValueError) as e:   # sentencepiece raises RuntimeError on bad bytes
        problem = (str(e).strip().splitlines() or [""])[0][:200]
        raise T5LoadError(f"{path}: not a usable SentencePiece model ({problem})") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise T5LoadError(f"{path}: {tokenizer.vocab_size} pieces, more than the model's vocab_size "
                          f"{config.vocab_size}")
    return tokenizer


def load_t5(path, device="cpu", dtype=torch.float32):
    """
    (tokenizer, encoder) from a Hugging Face-format T5 directory: config.json, spiece.model, and
    model.safetensors or pytorch_model.bin (or their sharded *.index.json forms). A full
    encoder-decoder checkpoint is fine; only its encoder is read. The encoder comes back frozen
    (eval mode, no gradients) on `device` in `dtype`. Any problem with the files raises
    T5LoadError, a ValueError whose one-line message names the file.
    """
    if not os.path.isdir(path):
        raise T5LoadError(f"{path}: not a directory")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    config = read_config(os.path.join(path, "config.json"))
    tokenizer = read_tokenizer(os.path.join(path, "spiece.model"), config)
    state = read_encoder_weights(path, config, device, dtype)
    with torch.device("meta"):               # no memory for weights that are about to be replaced
        encoder = T5Encoder(config)
    encoder.load_state_dict(state, assign=True)
    return tokenizer, encoder.eval().requires_grad_(False)


def save_t5(path, tokenizer_model, encoder):
    """
    Write `encoder` as a Hugging Face-format directory that load_t5 and transformers'
    T5EncoderModel both read: config.json, model.safetensors, spiece.model.
    :param tokenizer_model: a Tokenizer, the bytes of a SentencePiece model, or a path to one.
    """
    if isinstance(tokenizer_model, Tokenizer):
        proto = tokenizer_model.model_proto
    elif isinstance(tokenizer_model, (bytes, bytearray)):
        proto = bytes(tokenizer_model)
    else:
        with open(tokenizer_model, "rb") as f:
            proto = f.read()
    Tokenizer(proto)                         # refuse a model that is not a T5 one before writing
    os.makedirs(path, exist_ok=True)
    tensors = checkpoint_from_state(encoder.config, encoder.state_dict())
    write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_dict(encoder.config), f, indent=2)
    with open(os.path.join(path, "spiece.model"), "wb") as f:
        f.write(proto)


# -----------------------------------------------------------------------------
# embedding cache

def fingerprint(encoder):
    """A hex digest of an encoder's config and weights: its identity for the cache."""
    h = hashlib.sha256(json.dumps(asdict(encoder.config), sort_keys=True).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(memoryview(_as_bytes(t.detach().cpu()).numpy()))
    return h.hexdigest()


class EmbeddingCache:
    """
    The frozen encoder runs once per distinct caption: `cache(texts)` encodes the captions it has
    not seen (in batches, without gradients) and reads the rest from memory, on the CPU.
    Keys are (encoder fingerprint, max_len, text). Only the real tokens are stored, so a caption
    costs n_tokens * D * 4 bytes in float32: 30 tokens of t5-large (D 1024) is 123 kB, and 100k
    distinct captions 12 GB. Padded positions come back as zeros (the encoder's values there are
    masked out downstream anyway).
    """

    def __init__(self, tokenizer, encoder, max_len, batch_size=64):
        self.tokenizer, self.encoder, self.max_len, self.batch_size = tokenizer, encoder, max_len, batch_size
        self.fingerprint = fingerprint(encoder)           # hashed once: the encoder is frozen
        self.store = {}                                   # key -> (n_tokens, D) tensor on the CPU
        self.hits = self.misses = 0

    def key(self, text):
        return (self.fingerprint, self.max_len, text)

    def __len__(self):
        return len(self.store)

    @torch.no_grad()
    def encode(self, texts):
        """Run the encoder on `texts` and store each caption's real-token embeddings."""
        device = self.encoder.embed.weight.device
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            ids, mask = self.tokenizer(chunk, self.max_len)
            emb = self.encoder(ids.to(device), mask.to(device)).cpu()          # (b, L, D)
            for text, e, n in zip(chunk, emb, mask.sum(1).tolist()):
                self.store[self.key(text)] = e[:n].clone()

    def __call__(self, texts):
        """:return: emb (B, max_len, D) on the CPU, mask (B, max_len) bool, as encoder(*tokenizer(texts))."""
        new = list(dict.fromkeys(t for t in texts if self.key(t) not in self.store))  # distinct, in order
        self.misses += len(new)
        self.hits += len(texts) - len(new)
        self.encode(new)
        stored = [self.store[self.key(t)] for t in texts]
        emb = torch.zeros(len(texts), self.max_len, self.encoder.config.d_model, dtype=self.encoder.embed.weight.dtype)
        mask = torch.zeros(len(texts), self.max_len, dtype=torch.bool)
        for i, e in enumerate(stored):
            emb[i, :len(e)], mask[i, :len(e)] = e, True
        return emb, mask
