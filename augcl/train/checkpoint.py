"""The driver's checkpoint ``last.pt``: written atomically, verified by a checksum before ``--resume`` uses it.

The file is a plain ``torch.save`` dict, so ``torch.load(path, weights_only=True)`` reads it as before. Entries
(format 2): ``format``, ``epoch``, ``step`` (optimizer steps taken), ``args`` (the command line), ``config``
(resolved settings), ``method`` / ``optimizer`` / ``scaler`` (state dicts), ``history`` (log.csv's rows),
``baseline`` (the random-init encoder's accuracies), ``rng`` (torch and Python generator states),
``schedule`` (the learning-rate segments, augcl/train/schedule.py) and ``checksum``.

``checksum`` is ``"sha256:<hex>"`` of the canonical content of every other entry (:func:`content_sha256`):
each tensor's dtype, shape and bytes and every other value's type and value, walked in order. It is a digest of
the content rather than of the file's bytes so that the file stays an ordinary torch.save file; a flipped bit in
a tensor, in a number or in the pickled structure changes the digest (or makes torch.load fail), and a
truncated file fails to load (the zip index sits at its end).

Writing goes to ``last.pt.tmp`` (flushed and fsync'ed), then ``os.replace`` onto ``last.pt``: a run killed
while saving leaves the previous checkpoint intact (and at most a stale ``.tmp``, overwritten next time).

Format 1 (augcl.train before checksums) has no ``checksum`` and no ``schedule``; it is still resumed, with a
note that it could not be verified.
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path
from typing import Dict, List, Optional

import torch

from augcl.train.errors import ConfigError

__all__ = ["FORMAT", "CheckpointError", "content_sha256", "save_checkpoint", "load_checkpoint", "restore_state",
           "rng_state"]

FORMAT = 2
_ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes (a zip archive)
# Entry -> expected type, per format (format 1 had no checksum and no schedule).
_ENTRIES_V1 = {"epoch": int, "step": int, "args": dict, "config": dict, "method": dict, "optimizer": dict,
               "scaler": dict, "history": list, "baseline": dict, "rng": dict}
_ENTRIES = {1: _ENTRIES_V1, 2: dict(_ENTRIES_V1, schedule=list, checksum=str)}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed (unreadable, corrupted, incomplete or from another model)."""


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first sentence on one short line (torch's load errors run to paragraphs)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip().split(". ")[0].rstrip(".") if lines else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _feed(h, obj) -> None:
    """Feed ``obj``'s canonical content into the hash ``h``: a type tag, then the value (recursively)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: any dtype, bf16 included
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for key, value in obj.items():  # insertion order: torch.load restores it
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, bool) or obj is None:  # (before int: bool is an int)
        h.update(f"B{obj}|".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj}|".encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))  # exact bits, NaN and -0.0 included
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}|".encode() + data)
    elif isinstance(obj, bytes):
        h.update(f"Y{len(obj)}|".encode() + obj)
    elif isinstance(obj, torch.dtype):  # (optimizer states may hold one)
        h.update(f"P{obj}|".encode())
    else:
        raise TypeError(f"checkpoint content of type {type(obj).__name__} has no canonical form")


def content_sha256(state: Dict) -> str:
    """``"sha256:<hex>"`` of the canonical content of ``state``'s entries other than ``checksum``."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: Path, state: Dict) -> None:
    """Write ``state`` (format and checksum added) to ``path`` atomically: tmp file, fsync, ``os.replace``."""
    state = dict(state, format=FORMAT)
    state["checksum"] = content_sha256(state)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them last.pt
        os.replace(tmp, path)
    except BaseException:  # (KeyboardInterrupt too: no half-written tmp file is left behind)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); platforms that cannot open a folder (Windows) skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> Dict:
    """The verified content of checkpoint ``path``; CheckpointError (one line) if it is missing, unreadable,
    truncated, corrupted (checksum mismatch), incomplete or of an unknown format."""
    where = f"--resume: {path}"
    if not Path(path).is_file():
        raise CheckpointError(f"--resume: no checkpoint {path} to resume from")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC:  # torch.save's zip format; anything else was never written by the driver
        raise CheckpointError(f"{where} is {'empty' if not head else 'not a torch.save zip file'}, "
                              "so not a checkpoint written by augcl.train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (zip, pickle and weights-only errors all mean "not readable")
        raise CheckpointError(f"{where} cannot be read, it is truncated or corrupted ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in _ENTRIES:
        raise CheckpointError(f"{where} is not a checkpoint written by augcl.train")
    entries = _ENTRIES[ckpt["format"]]
    missing = [k for k in entries if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where} is incomplete: no {', '.join(missing)}")
    wrong = [f"{k} is a {type(ckpt[k]).__name__}, not a {t.__name__}" for k, t in entries.items()
             if not isinstance(ckpt[k], t) or (t is int and isinstance(ckpt[k], bool))]
    if wrong:
        raise CheckpointError(f"{where} is malformed: {'; '.join(wrong)}")
    if "checksum" in entries:
        try:
            actual = content_sha256(ckpt)
        except TypeError as exc:
            raise CheckpointError(f"{where} is malformed: {exc}") from None
        if actual != ckpt["checksum"]:
            raise CheckpointError(f"{where} is corrupted: its content's checksum {actual[:19]}... differs from "
                                  f"the stored {ckpt['checksum'][:19]}...")
    return ckpt


def _names(keys: List[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _state_mismatch(model: torch.nn.Module, state: Dict) -> Optional[str]:
    """What keeps ``state`` from loading into ``model`` (missing / unexpected keys, other shapes), or None."""
    own = model.state_dict()
    # a module's extra state that an older checkpoint lacks: the module fills its default (BYOL's momentum schedule)
    missing = [k for k in own if k not in state and not k.endswith("_extra_state")]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
                if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = ([f"{len(missing)} missing ({_names(missing)})"] if missing else []) + \
            ([f"{len(unexpected)} unexpected ({_names(unexpected)})"] if unexpected else []) + \
            ([f"{len(reshaped)} of another shape ({_names(reshaped)})"] if reshaped else [])
    return "; ".join(parts) or None


def restore_state(ckpt: Dict, path: Path, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> None:
    """Load the model, optimizer, grad-scaler and generator states of a verified checkpoint; CheckpointError
    (one line) when they do not fit the model built from its settings (another method, backbone or shapes)."""
    cfg = ckpt["config"]
    model = f"{cfg.get('method')} / {cfg.get('backbone')}"
    mismatch = _state_mismatch(method, ckpt["method"])
    if mismatch:
        raise CheckpointError(f"--resume: {path} does not fit the {model} model built from its settings: "
                              f"{mismatch}")
    try:
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"--resume: {path} does not fit the {model} run built from its settings: "
                              f"{_first_line(exc)}") from None


def rng_state() -> Dict:
    """The global generators' states (torch CPU, Python, and every CUDA device's when there is one)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
