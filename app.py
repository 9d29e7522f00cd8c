"""Hear the cascade: a local web page that generates music and plays every stage (section 3.3, Figure 1).

    pip install -r requirements-app.txt        # the page's own dependency (Gradio), optional
    python app.py                              # then open http://127.0.0.1:7860

The page takes a prompt, the pipeline (waveform or spectrogram), a seed, a length and every
per-stage knob of sample.py (its `--STAGE-FIELD` flags, read by the same parser functions), and
shows each stage's output as it ends, with a player, a log-mel picture, a WAV download and a
progress bar per stage: the 3.2 kHz sketch (or the log-mel, heard through Griffin-Lim), the 16 kHz
audio and the 24 kHz result. Generation is sample.py's: `cascade.cascade_generate` on models loaded
by `sample.load_models`, so a page and a command line with the same prompt, seed and settings give
the same 24 kHz audio.

The generation core (`read_request`, `Studio`) does not import Gradio; only `build_page` does.
Requests run one at a time under a lock (two cores gain nothing from running two cascades at once),
each writes into its own folder, and a user's mistake is a message on the page, never a stopped
server. Simplifications: one prompt per request (no batches); an empty prompt is refused rather
than generated unconditionally as sample.py does; the models of one checkpoint folder stay loaded
(a request naming another folder replaces them). The pictures are sample.py's `--save-stages`
pictures (plots.py): log-mels, which span 0-8 kHz, so super-res's band above 8 kHz is heard, not seen.
"""
import argparse
import dataclasses
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback

import numpy as np
import torch

import cascade
import checks
import data
import plots
import sample

STAGE_ROLES = {"wave-generator": "3.2 kHz sketch", "cascader": "16 kHz", "spec-generator": "log-mel (Griffin-Lim)",
               "vocoder": "16 kHz", "super-res": "24 kHz result"}


class PageError(ValueError):
    """A user's mistake, shown on the page as one line."""


class _PageParser(argparse.ArgumentParser):
    """sample.py's knob flags and checks, with a mistake raised as PageError instead of exiting."""

    def error(self, message):
        raise PageError(message)


def knob_parser():
    """A parser holding exactly sample.py's per-stage flags (`sample.add_knob_flags`)."""
    p = _PageParser(prog="app.py", add_help=False)
    sample.add_knob_flags(p)
    return p


def knob_flags():
    """[(stage, flag, help)] of every knob flag, in cascade order: the page's knob fields."""
    out = []
    for action in knob_parser()._actions:
        flag = action.option_strings[0]
        stage = next(s for s in cascade.STAGES if flag.startswith(f"--{s}-"))
        out.append((stage, flag, action.help))
    return out


def knob_id(flag):
    """The page element id of a knob's field: --cascader-steps -> knob-cascader-steps."""
    return "knob-" + flag.lstrip("-")


@dataclasses.dataclass
class Request:
    """One generation, checked: the page's fields as sample.py would read them."""
    prompt: str
    pipeline: str
    seed: int
    seconds: float
    ckpt_dir: str
    knobs: dict                 # {stage: cascade.Sampling}


def read_request(prompt, pipeline, seed, seconds, ckpt_dir, knob_texts=None):
    """Check the page's fields; PageError names the first bad one. knob_texts: {flag: text}, blank = default."""
    if not (prompt or "").strip():
        raise PageError("write a prompt first")
    if pipeline not in cascade.PIPELINES:
        raise PageError(f"pipeline must be one of {', '.join(cascade.PIPELINES)}")
    try:
        seconds = float(seconds)
        seed = int(seed)
    except (TypeError, ValueError, OverflowError):
        raise PageError("seed must be a whole number and seconds a number") from None
    try:
        checks.check_number("seconds", seconds, sample.MIN_SECONDS, sample.MAX_SECONDS)   # also refuses NaN
        checks.check_seed("seed", seed)
    except checks.InputError as e:
        raise PageError(str(e)) from None
    if not os.path.isdir(ckpt_dir or ""):
        raise PageError(f"no checkpoint folder {ckpt_dir!r}")
    argv = [f"{flag}={text.strip()}" for flag, text in (knob_texts or {}).items() if text and text.strip()]
    p = knob_parser()
    knobs = sample.read_knobs(p.parse_args(argv), p)
    return Request(prompt, pipeline, seed, seconds, ckpt_dir, knobs)


# ------------------------------------------------------------------------------------------------
# Pictures and files of one stage's output

def write_stage(folder, name, x, spec):
    """name.wav and name.png for one stage's output x ((1, T) audio or (80, F) log-mel); returns both paths."""
    x = x.float().numpy()
    if not np.isfinite(x).all():
        raise PageError(f"{name} produced NaN or infinite values")
    wav, png = os.path.join(folder, f"{name}.wav"), os.path.join(folder, f"{name}.png")
    if spec.output == "spec":       # heard through Griffin-Lim (data.griffin_lim), at 16 kHz
        sample.write_wave(wav, data.griffin_lim(torch.from_numpy(x)).numpy(), data.MEL_SAMPLE_RATE)
        plots.save_spectrogram(png, x, f"{name}: log-mel")
    else:
        sample.write_wave(wav, x[0], spec.sample_rate)
        plots.save_wave_spectrogram(png, x[0], spec.sample_rate, f"{name}: {spec.sample_rate / 1000:g} kHz audio")
    return wav, png


# ------------------------------------------------------------------------------------------------
# The generation core: models, lock, one thread per request

@dataclasses.dataclass
class Event:
    """What a running request reports: kind is "wait", "step", "output", "error" or "done"."""
    kind: str
    stage: str = ""
    done: int = 0
    total: int = 0
    wav: str = ""
    png: str = ""
    message: str = ""


class _Announcing(dict):
    """The `keep` dict of cascade_generate that reports each stage's output as it arrives."""

    def __init__(self, report):
        super().__init__()
        self.report = report

    def __setitem__(self, name, x):
        super().__setitem__(name, x)
        self.report(name, x)

    def update(self, other=(), **kw):
        for name, x in dict(other, **kw).items():
            self[name] = x


class Studio:
    """Loaded models (one checkpoint folder at a time), a lock, and a folder per request."""

    def __init__(self, device="cpu", workdir=None, keep_runs=8):
        self.device = torch.device(device)
        self.lock = threading.Lock()
        self.models, self.models_dir = {}, None          # {pipeline: (stages, text_encoder)}
        self.workdir = workdir or tempfile.mkdtemp(prefix="noise2music-studio-")
        self.keep_runs = keep_runs

    def _load(self, req):
        """The pipeline's stages and text encoder, loaded by sample.load_models (held: call under the lock)."""
        if self.models_dir != os.path.abspath(req.ckpt_dir):
            self.models, self.models_dir = {}, os.path.abspath(req.ckpt_dir)
        if req.pipeline not in self.models:
            args = argparse.Namespace(pipeline=req.pipeline, ckpt_dir=req.ckpt_dir)
            self.models[req.pipeline] = sample.load_models(args, _PageParser(), self.device)
        return self.models[req.pipeline]

    def _new_folder(self):
        """A fresh folder for one request; the oldest beyond keep_runs are removed."""
        runs = sorted(os.path.join(self.workdir, d) for d in os.listdir(self.workdir))
        for old in runs[:max(0, len(runs) - self.keep_runs + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self.workdir)

    def generate(self, req):
        """Run `req` in a worker thread; yield Events until "done" or "error"."""
        events = queue.Queue()
        thread = threading.Thread(target=self._work, args=(req, events), daemon=True)
        thread.start()
        while True:
            event = events.get()
            yield event
            if event.kind in ("done", "error"):
                return

    def _work(self, req, events):
        def progress(name):
            def steps(indices):
                indices = list(indices)
                for i, n in enumerate(indices):
                    events.put(Event("step", name, i, len(indices)))
                    yield n
                events.put(Event("step", name, len(indices), len(indices)))
            return steps

        def output(name, x):
            wav, png = write_stage(folder, name, x[0], stages[name].spec)
            events.put(Event("output", name, wav=wav, png=png))

        try:
            if self.lock.locked():
                events.put(Event("wait", message="waiting for the generation before this one"))
            with self.lock:
                folder = self._new_folder()
                stages, text_encoder = self._load(req)
                with torch.no_grad():
                    cascade.cascade_generate(stages, text_encoder, [req.prompt], req.pipeline, req.seconds,
                                             req.seed, req.knobs, self.device, progress, _Announcing(output))
            events.put(Event("done", message=folder))
        except PageError as e:
            events.put(Event("error", message=str(e)))
        except Exception as e:          # not the user's mistake: keep serving, say what failed
            traceback.print_exc()
            events.put(Event("error", message=f"generation failed: {type(e).__name__}: {e}"))


# ------------------------------------------------------------------------------------------------
# The page (Gradio)

def _bar(stage, done, total, note=""):
    """One stage's progress line: its name, an HTML progress bar and the step count."""
    if not total:
        return f"<b>{stage}</b> <small>{note or 'waiting'}</small>"
    return (f"<b>{stage}</b> <progress value='{done}' max='{total}'></progress> "
            f"<small>{done}/{total} steps{' ' + note if note else ''}</small>")


def build_page(studio, ckpt_dir):
    """The Gradio Blocks of the page: inputs, knobs per stage, and a column per stage of the pipeline."""
    import gradio as gr

    flags = knob_flags()
    shown = cascade.PIPELINES[cascade.DEFAULT_PIPELINE]        # the stages the page opens with
    with gr.Blocks(title="Noise2Music studio", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("## Noise2Music: hear every stage of the cascade")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", placeholder="fast drums and bass", elem_id="prompt")
                with gr.Row():
                    pipeline = gr.Radio(list(cascade.PIPELINES), value=cascade.DEFAULT_PIPELINE, label="Pipeline",
                                        info="wave: 3.2 kHz -> 16 kHz -> 24 kHz; spec: log-mel -> 16 kHz -> 24 kHz")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                    seconds = gr.Number(cascade.stage_spec(shown[0]).clip_seconds, label="Seconds", elem_id="seconds")
                ckpt = gr.Textbox(ckpt_dir, label="Checkpoint folder", elem_id="ckpt")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                message = gr.Markdown(elem_id="message")
            with gr.Column(scale=2):
                knob_boxes, groups = [], {}
                for stage in cascade.STAGES:
                    with gr.Accordion(f"{stage} knobs (blank: default)", open=False,
                                      visible=stage in shown, elem_id=f"knobs-{stage}") as groups[stage]:
                        for _, flag, help_text in (f for f in flags if f[0] == stage):
                            knob_boxes.append(gr.Textbox(label=flag, placeholder=help_text, max_lines=1,
                                                         elem_id=knob_id(flag)))
        bars, players, pictures = [], [], []
        with gr.Row():
            for k, stage in enumerate(shown):
                with gr.Column():
                    bars.append(gr.HTML(_bar(stage, 0, 0), elem_id=f"bar{k}"))
                    players.append(gr.Audio(type="filepath", label=STAGE_ROLES[stage], interactive=False,
                                            elem_id=f"audio{k}", buttons=["download"]))
                    pictures.append(gr.Image(type="filepath", label="spectrogram", show_label=False, interactive=False,
                                             elem_id=f"picture{k}", buttons=["fullscreen"]))
        downloads = gr.File(label="WAV downloads", file_count="multiple", interactive=False, elem_id="downloads")

        def show_pipeline(name):
            names = cascade.PIPELINES[name]
            return ([gr.update(visible=s in names) for s in cascade.STAGES]
                    + [_bar(s, 0, 0) for s in names] + [gr.update(label=STAGE_ROLES[s], value=None) for s in names]
                    + [None] * len(pictures))
        pipeline.change(show_pipeline, pipeline, [groups[s] for s in cascade.STAGES] + bars + players + pictures)

        outputs = [message, *bars, *players, *pictures, downloads]

        def run(prompt_text, pipeline_name, seed_value, seconds_value, ckpt_value, *knob_values):
            names = cascade.PIPELINES[pipeline_name] if pipeline_name in cascade.PIPELINES else ()
            cleared = {message: "", downloads: None, **{b: _bar(s, 0, 0) for b, s in zip(bars, names)},
                       **{p: None for p in players + pictures}}
            try:
                req = read_request(prompt_text, pipeline_name, seed_value, seconds_value, ckpt_value,
                                   {f[1]: v for f, v in zip(flags, knob_values)})
            except PageError as e:
                yield {**cleared, message: f"**Error:** {e}"}
                return
            yield cleared
            yield from _stream(studio.generate(req), names, bars, players, pictures, message, downloads)

        go.click(run, [prompt, pipeline, seed, seconds, ckpt, *knob_boxes], outputs)
        prompt.submit(run, [prompt, pipeline, seed, seconds, ckpt, *knob_boxes], outputs)
    return page


def _stream(events, names, bars, players, pictures, message, downloads, every=0.25):
    """Page updates from a request's Events: bars at most every `every` seconds, outputs at once."""
    start, last, wavs, pending, totals = time.perf_counter(), 0.0, [], {}, {}
    for event in events:
        now = time.perf_counter() - start
        if event.kind == "step":
            totals[event.stage] = event.total
            pending[bars[names.index(event.stage)]] = _bar(event.stage, event.done, event.total)
            if now - last < every and event.done < event.total:
                continue
        elif event.kind == "wait":
            pending[message] = event.message
        elif event.kind == "output":
            k = names.index(event.stage)
            wavs.append(event.wav)
            n = totals.get(event.stage, 1)
            pending.update({bars[k]: _bar(event.stage, n, n, f"(ready at {now:.1f} s)"), players[k]: event.wav,
                            pictures[k]: event.png, downloads: list(wavs)})
        elif event.kind == "error":
            pending[message] = f"**Error:** {event.message}"
        else:
            pending[message] = f"Done in {now:.1f} s."
        yield pending
        pending, last = {}, now


def build_parser():
    p = data.OneLineParser(description="A local web page that generates music and plays every stage.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (loopback: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--ckpt-dir", default="checkpoints/toy", help="the page's default checkpoint folder")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error("--port must be in 1..65535")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        p.error("the page needs Gradio: pip install -r requirements-app.txt")
    try:
        device = checks.resolve_device(args.device)
    except checks.InputError as e:
        p.error(str(e))
    studio = Studio(device)
    page = build_page(studio, args.ckpt_dir)
    try:
        page.queue().launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True,
                            allowed_paths=[studio.workdir])
    except OSError as e:
        p.error(str(e).splitlines()[0])


if __name__ == "__main__":
    main()
