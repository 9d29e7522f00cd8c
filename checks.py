"""Refuse bad input before any work starts, and never leave a partial output behind.

Every command line of the project checks what a run needs (numbers finite and in range, a device
that exists, output paths that can be written, checkpoints of the right stage and scale) before
the first model runs, and says what is wrong in one line (exit status 2). Outputs are written to a
temporary file beside their final path and renamed into place, so a full disk or a crash leaves
the previous file (or none), never a truncated one that still reads as valid, and two writers to
one path leave one writer's whole output. The helpers here raise `InputError`; each command line
turns it into its one-line message.
"""
import math
import os
import pickle
import re

import torch


class InputError(ValueError):
    """A user's mistake: the message is the one line the command prints."""


# ------------------------------------------------------------------------------------------------
# Numbers

def check_number(flag, value, low=None, high=None, low_open=False, high_open=False):
    """`value` must be finite and within [low, high] (an open end excludes the bound itself)."""
    if value is None:
        return value
    if not math.isfinite(value):
        raise InputError(f"{flag} must be a finite number, not {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise InputError(f"{flag} must be in {left}{lo}, {hi}{right}, not {value:g}")
    return value


SEED_LIMIT = 2 ** 63    # seeds feed torch.Generator and numpy's SeedSequence: non-negative 63-bit


def check_seed(flag, seed):
    if not 0 <= seed < SEED_LIMIT:
        raise InputError(f"{flag} must be in [0, 2^63), not {seed}")
    return seed


# ------------------------------------------------------------------------------------------------
# Devices

def resolve_device(name):
    """torch.device for "", "cpu", "cuda", "cuda:N" or "mps" ("": cuda when available), or InputError."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name}: not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
        if (device.index or 0) >= count:
            raise InputError(f"--device {name}: this machine has {count} CUDA GPU(s)")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise InputError(f"--device {name}: not available here (cpu, cuda, cuda:N or mps)")


# ------------------------------------------------------------------------------------------------
# Output paths: checked first, written through a temporary file

def temporary_path(path):
    """Where `path` is written before its rename: the same folder, tagged with this process's id."""
    return f"{path}.tmp{os.getpid()}"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path):
    """Delete `path.tmpPID` files left by processes that no longer run (a crash, kill -9)."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.tmp(\d+)$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for other in names:
        match = pattern.match(other)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass


def check_writable_dir(flag, folder):
    """Create `folder` if needed and prove that a file can be written there, or InputError."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{flag} {folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise InputError(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None
    return folder


def check_output_file(flag, path, suffix=None):
    """`path` can be written (its folder writable, not itself a folder), with `suffix` if given."""
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    if suffix and not path.lower().endswith(suffix):
        raise InputError(f"{flag} {path}: the output is a {suffix} file; give a name ending in {suffix}")
    check_writable_dir(flag, os.path.dirname(os.path.abspath(path)))
    return path


def atomic_write(path, write):
    """Call write(tmp_path), flush it to disk, then rename it over `path`; on failure remove tmp."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------------------------------------
# Checkpoints: which stage and scale a file holds, and whether its numbers are finite

def check_identity(ckpt, path, stage=None, scale=None):
    """The checkpoint dict `ckpt` read from `path` must name `stage` and `scale` (None: any)."""
    if not isinstance(ckpt, dict) or not {"stage", "scale", "config", "ema"} <= set(ckpt):
        raise InputError(f"{path}: not a stage checkpoint of this project (no stage, scale, config and ema)")
    if stage is not None and ckpt["stage"] != stage:
        raise InputError(f"{path} holds the {ckpt['stage']} stage, not the {stage}")
    if scale is not None and ckpt["scale"] != scale:
        raise InputError(f"{path} holds the {ckpt['stage']} at {ckpt['scale']} scale, not {scale}")


def load_problem(error):
    """One short line for why torch.load failed on a file (torch's own messages run to paragraphs)."""
    text = " ".join(str(error).split())
    if "unsupported GLOBAL" in text:
        return "it holds Python objects beyond tensors (not loaded: loading them could run code)"
    if isinstance(error, pickle.UnpicklingError) or any(
            w in text for w in ("hasRecord", "zip archive", "central directory")):
        return "not a torch checkpoint file (corrupt, truncated or another format)"
    return (text.split(". ")[0] or type(error).__name__)[:160]


def nonfinite_tensors(state):
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite_state(state, what):
    bad = nonfinite_tensors(state)
    if bad:
        raise InputError(f"{what} holds NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]})")
