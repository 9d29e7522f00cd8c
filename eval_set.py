"""The toy evaluation set and the protocol of sections 4.3-4.4: prompts, ground truth, generation
at 16 kHz and scoring.

The evaluation set (`eval_set`): prompts are the toy corpus's held-out phrasings
(heldout_captions.jsonl, never used as training captions), and each prompt's ground truth is a set
of corpus clips whose TRUE attributes (tempo, instrument, mode, drums) are the ones the prompt
names. Per prompt, `refs` clips form the FAD reference set R, and one more clip, B, stands for
"the ground truth audio" (a real clip that fits the prompt), so that FAD(B, R) is the floor a
perfect generator would reach with the same number of clips.

The protocol of 4.3.1/4.3.3: 16 kHz outputs (the super-resolution stage is skipped:
`generate_first`, `generate_second` run cascade's first two stages exactly as cascade_generate
does), and the middle 10 s of a 30 s output (`middle`; a toy clip of 4 s is scored whole).

What the numbers mean, given the toy's limits:
- The toy corpus has no audio held out from the cascade's training: ground-truth clips are
  training clips (the prompts' phrasings are held out). MuLan was trained on 90% of them too.
- The toy MuLan is the one that pseudo-labelled and produced the text encoder (as in the paper,
  where MuLan pseudo-labels the training data: section 4.4's caveat applies doubly here).
- The untrained baseline is each stage's U-Net with fresh random weights (same config, same
  sampler and text encoder): a floor for "no learning at all".
"""
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import cascade
import data
import pseudolabel
from data import MEL_FPS
import text
from metrics import MfccEmbedder, MulanEmbedder, fad, log_mels, similarity_rows, mulan_similarities
from unet1d import UNet1D

EVAL_SECONDS = 10.0    # section 4.3.3: the middle 10 s of each 30 s output is scored


class UsageError(ValueError):
    """A mistake a user can make (a missing file, a bad flag): one line, exit status 2."""


HELDOUT_CAPTIONS = "heldout_captions.jsonl"


@dataclass
class EvalSet:
    prompts: list       # N held-out phrasings
    attributes: list    # N dicts: the attributes each prompt names
    clips: list         # N lists of refs + 1 corpus audio paths whose true attributes match


def read_manifest(path):
    """data.read_manifest, with its errors as UsageError."""
    try:
        return data.read_manifest(path)
    except data.ManifestError as e:
        raise UsageError(str(e)) from None


def read_heldout(path):
    """[(caption, attributes)] of a heldout_captions.jsonl."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append((str(obj["caption"]), dict(obj["attributes"])))
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path}:{number}: expected {{\"caption\": ..., \"attributes\": {{...}}}}") from None
    return out


def eval_set(corpus, n, refs, seed=0):
    """n held-out prompts, each with refs + 1 distinct corpus clips that fit it.

    Prompts are drawn across the attribute combinations first (a shuffled order of the
    combinations, one phrasing each, then the second phrasings, ...), so that n prompts cover
    min(n, combinations) of them. A clip fits a prompt when its true attributes equal every
    attribute the prompt names; no clip serves two prompts.
    """
    heldout = read_heldout(os.path.join(corpus, HELDOUT_CAPTIONS))
    entries = [e for e in read_manifest(os.path.join(corpus, "manifest.jsonl")) if isinstance(e.get("attributes"), dict)]
    groups = {}
    for caption, attributes in heldout:
        groups.setdefault(json.dumps(attributes, sort_keys=True), []).append(caption)
    rng = np.random.default_rng(seed)
    keys = [sorted(groups)[i] for i in rng.permutation(len(groups))]
    order = [(k, i) for i in range(max(map(len, groups.values()), default=0)) for k in keys if i < len(groups[k])]
    if not 2 <= n <= len(order):
        raise UsageError(f"--n must be between 2 and the {len(order)} held-out prompts of {corpus}")
    pools, result = {}, EvalSet([], [], [])
    for key, i in order[:n]:
        wanted = json.loads(key)
        if key not in pools:
            fits = [e["audio"] for e in entries if all(e["attributes"].get(a) == v for a, v in wanted.items())]
            pools[key] = [fits[j] for j in rng.permutation(len(fits))]
        if len(pools[key]) < refs + 1:
            raise UsageError(f"{corpus}: too few clips fit {key} for --refs {refs}")
        result.prompts.append(groups[key][i])
        result.attributes.append(wanted)
        result.clips.append([pools[key].pop() for _ in range(refs + 1)])
    return result


def load_ground_truth(paths, seconds, rate=16000):
    """[len(paths) x seconds * rate] float32: each clip decoded, FFT-resampled whole, its middle."""
    out = np.zeros((len(paths), int(round(seconds * rate))), dtype=np.float32)
    for j, path in enumerate(paths):
        try:
            wave, sr = data.decode_audio(path)
        except data.AudioError as e:
            raise UsageError(f"{path}: {e}") from None
        wave = data.fft_resample(wave.astype(np.float64), sr, rate)
        out[j] = cascade.fit_length(middle(wave, rate, seconds), out.shape[1])
    return out


def middle(x, rate, seconds):
    """The middle `seconds` (at `rate` per second) of the last axis of x; all of x when shorter."""
    n, total = int(round(seconds * rate)), x.shape[-1]
    if total <= n:
        return x
    start = (total - n) // 2
    return x[..., start:start + n]


def load_embedders(mulan_path):
    """{"MFCC": MfccEmbedder, "MuLan": MulanEmbedder} with the MuLan model of `mulan_path`."""
    try:
        model = pseudolabel.load_mulan(mulan_path)
    except pseudolabel.MulanLoadError as e:
        raise UsageError(f"MuLan model: {e}") from None
    return {"MFCC": MfccEmbedder(), "MuLan": MulanEmbedder(model)}


# ----------------------------------------------------------------------------------------------
# Generation at 16 kHz: the first two stages of a pipeline (section 4.3.1: super-res skipped)

def reinitialize_(stage, seed):
    """Give a StageModel fresh random weights of the same U-Net: the untrained baseline."""
    torch.manual_seed(seed)
    stage.model = UNet1D(stage.model.config).to(stage.device).eval().requires_grad_(False)


def load_pipeline(ckpt_dir, pipeline, device="cpu", untrained_seed=None):
    """({name: cascade.StageModel} of the pipeline's first two stages, (tokenizer, encoder)).

    :param untrained_seed: when not None, the stages' weights are replaced by a fresh random
        initialization (seeded), for the untrained-model baseline.
    """
    models = {}
    for k, name in enumerate(cascade.PIPELINES[pipeline][:2]):
        path = os.path.join(ckpt_dir, f"{name}.pt")
        if not os.path.isfile(path):
            raise UsageError(f"missing checkpoint {path} (train it with `python train.py --stage {name}`)")
        try:
            models[name] = cascade.StageModel(path, device, torch.bfloat16 if str(device).startswith("cuda") else None, name)
        except Exception as e:
            raise UsageError(f"cannot read checkpoint {path}: {(str(e).splitlines() or [''])[0]}") from None
        if untrained_seed is not None:
            reinitialize_(models[name], untrained_seed + k)
    try:
        text_encoder = text.load_t5(models[cascade.PIPELINES[pipeline][0]].t5, device=device)
    except (text.T5LoadError, OSError) as e:
        raise UsageError(f"cannot load the text encoder: {e}") from None
    return models, text_encoder


def first_stage(models, text_encoder, prompts, pipeline, seconds, knobs, generator):
    """The generator of `pipeline` (cascade.first_stage): (B, 1, T) 3.2 kHz audio or (B, 80, F)."""
    stage = models[cascade.PIPELINES[pipeline][0]]
    return cascade.first_stage(stage, text_encoder, prompts, seconds, knobs[stage.spec.name], generator)


def second_stage(models, text_encoder, prompts, pipeline, seconds, knobs, generator, x1):
    """The cascader or vocoder of `pipeline` on the generator's output x1 (cascade.second_stage):
    (B, 1, T) at 16 kHz."""
    first, second = (models[n] for n in cascade.PIPELINES[pipeline][:2])
    return cascade.second_stage(second, first.spec, x1, text_encoder, prompts, seconds, knobs[second.spec.name],
                                generator)


@dataclass
class Outputs:
    x: object           # [N x C x T] tensor: a stage's output for every prompt
    states: list        # the random generator's state after each batch (where the next stage goes on)
    seconds: float      # wall-clock seconds the stage took, all batches


def generate_first(models, text_encoder, prompts, pipeline, seconds, knobs, seed, batch):
    """The generator on every prompt, in batches; batch b draws from a generator seeded seed + b * batch,
    as cascade_generate(prompts[b * batch:...], seed=seed + b * batch) does."""
    xs, states, t0 = [], [], time.perf_counter()
    for start in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed + start)
        xs.append(first_stage(models, text_encoder, prompts[start:start + batch], pipeline, seconds, knobs, gen).cpu())
        states.append(gen.get_state())
    return Outputs(torch.cat(xs), states, time.perf_counter() - t0)


def generate_second(models, text_encoder, prompts, pipeline, seconds, knobs, first: Outputs, batch):
    """The second stage on `first`, each batch going on with its generator's state: with the
    default knobs, exactly cascade_generate's 16 kHz intermediate (keep["cascader"/"vocoder"])."""
    xs, t0 = [], time.perf_counter()
    for b, start in enumerate(range(0, len(prompts), batch)):
        gen = torch.Generator()
        gen.set_state(first.states[b])
        xs.append(second_stage(models, text_encoder, prompts[start:start + batch], pipeline, seconds, knobs, gen,
                               first.x[start:start + batch]).cpu())
    return Outputs(torch.cat(xs), [], time.perf_counter() - t0)


def default_knobs(steps=None):
    """{stage: cascade.Sampling}: Table 3's defaults; `steps`, where given, overrides every stage's step count."""
    return {s: cascade.Sampling(steps=steps) for s in cascade.STAGES}


# ----------------------------------------------------------------------------------------------
# Scoring a set of generated clips against the ground truth

@dataclass
class Reference:
    """The ground truth of an evaluation set, embedded at one representation (rate)."""
    text: np.ndarray    # [N x E] MuLan embeddings of the prompts
    refs: dict          # embedder name -> [N x R x K x E]: the FAD reference set R (R clips per prompt)
    gt: dict            # embedder name -> [N x K x E]: one more ground-truth clip B per prompt


def build_reference(embedders, text_emb, gt_mels):
    """Embed ground-truth log-mels [N x (R + 1) x 80 x F]: the first R per prompt are the reference set."""
    N, R1 = gt_mels.shape[:2]
    refs, gt = {}, {}
    for name, embed in embedders.items():
        emb = embed(gt_mels.reshape(N * R1, *gt_mels.shape[2:]))           # (N (R + 1), K, E)
        emb = emb.reshape(N, R1, *emb.shape[1:])
        refs[name], gt[name] = emb[:, :-1], emb[:, -1]
    return Reference(text_emb, refs, gt)


def score(embedders, mels, ref: Reference):
    """FAD_<embedder> against the reference set, and MuLan audio<->text, audio<->audio similarity."""
    out = {}
    for name, embed in embedders.items():
        emb = embed(mels)                                                    # (N, K, E)
        out[f"FAD_{name}"] = fad(emb, ref.refs[name])
        if name == "MuLan":
            out["sim_text"], out["sim_audio"] = mulan_similarities(emb[:, 0], ref.text, ref.refs[name][:, :, 0])
    return out


def ground_truth_scores(ref: Reference, rng):
    """The same numbers for the ground truth (clip B of each prompt) and for it shuffled."""
    out = {f"FAD_{name}": fad(ref.gt[name], ref.refs[name]) for name in ref.refs}
    rows = similarity_rows(ref.text, ref.gt["MuLan"][:, 0], ref.refs["MuLan"][:, :, 0], {}, rng)
    out["sim_text"], out["sim_audio"] = rows[0][1:]
    out["shuffled_sim_text"], out["shuffled_sim_audio"] = rows[1][1:]
    return out


CONTRASTS = (("instrument", "bass", "flute", "instrument: bass / flute"), ("tempo", "slow", "fast", "tempo: slow / fast"),
             ("drums", False, True, "solo / drums"), (None, None, None, "music / white noise"))


def embedder_check(corpus, embedders, n=48, seconds=4.0, seed=0):
    """What each embedder hears, on real clips: for each contrast (bass/flute, slow/fast,
    drums/solo) and for music against white noise, FAD between two sets of n clips that differ
    in it, beside FAD between two disjoint sets that do not. [(contrast, {FAD_name: (between, within)})]"""
    entries = [e for e in read_manifest(os.path.join(corpus, "manifest.jsonl")) if isinstance(e.get("attributes"), dict)]
    rng = np.random.default_rng(seed)
    draw = lambda keep, k: [entries[i]["audio"] for i in rng.permutation(len(entries)) if keep(entries[i]["attributes"])][:k]
    mels = lambda paths: log_mels(load_ground_truth(paths, seconds), 16000)
    rows = []
    for attribute, a, b, label in CONTRASTS:
        sets = draw(lambda e: attribute is None or e.get(attribute) == a, 2 * n)
        other = draw(lambda e: e.get(attribute) == b, n) if attribute else []
        if len(sets) < 4 or (attribute and len(other) < 2):
            continue
        half = len(sets) // 2
        x, y = mels(sets[:half]), mels(sets[half:])
        z = mels(other) if attribute else log_mels(rng.normal(scale=0.1, size=(half, int(seconds * 16000))), 16000)
        rows.append((label, {name: (fad(embed(x), embed(z)), fad(embed(x), embed(y))) for name, embed in embedders.items()}))
    return rows


def stage_mels(spec, x, window):
    """A stage's output [N x C x T] as log-mels [N x 80 x F] of its middle `window` seconds."""
    x = x.float().numpy()
    if spec.output == "spec":
        return middle(x, MEL_FPS, window)
    return log_mels(middle(x[:, 0], spec.sample_rate, window), spec.sample_rate)
