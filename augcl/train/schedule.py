"""The learning-rate schedule of the driver: per-step linear warmup, then cosine decay to 0; continued, never
restarted, when ``--resume`` changes the run's length.

A schedule is a list of segments (plain dicts, stored in the checkpoint): ``start`` (first step), ``end``
(the step where the lr reaches 0), ``peak`` (the lr after warmup) and ``warmup`` (steps of linear warmup from
``start``). A fresh run has one segment, ``(0, total, lr, warmup)``. Step ``s`` follows the last segment that
starts at or before ``s``.

Resuming at step ``s`` with another total (``--epochs`` changed) keeps the segments so far and, past the
warmup, appends ``(s, new total, lr at s, 0)``: the lr carries on from where it was, along a new cosine that
reaches 0 at the new end, so it never jumps back up. A run that had already finished (lr 0) therefore adds
epochs at lr 0 unless ``--lr`` is given again, which starts the new cosine from that value (a deliberate
restart). Resumed during warmup, the warmup goes on (towards the new ``--lr`` if one is given) and only the
decay's end moves.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

__all__ = ["cosine_schedule", "lr_at", "continue_schedule"]


def cosine_schedule(total: int, warmup: int, peak: float) -> List[Dict]:
    """One segment: ``warmup`` steps of linear warmup to ``peak``, cosine decay to 0 at step ``total``."""
    return [dict(start=0, end=int(total), peak=float(peak), warmup=int(warmup))]


def lr_at(schedule: List[Dict], step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    seg = next(s for s in reversed(schedule) if s["start"] <= step)
    t, warmup = step - seg["start"], seg["warmup"]
    if t < warmup:
        return seg["peak"] * (t + 1) / warmup
    progress = (t - warmup) / max(1, seg["end"] - seg["start"] - warmup)
    return seg["peak"] * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def continue_schedule(schedule: List[Dict], step: int, total: int, peak: Optional[float] = None) -> List[Dict]:
    """The schedule of a run resumed at ``step`` whose total is now ``total`` steps.

    Unchanged when the total is the same and no new ``peak`` (``--lr`` given again) is asked for, so an
    interrupted run resumes exactly as if it had never stopped; unchanged too when nothing is left to train.
    """
    last = schedule[-1]
    if (total == last["end"] and peak is None) or step >= total:
        return schedule
    if step < last["start"] + last["warmup"]:  # still warming up: keep the slope, move the end
        return schedule[:-1] + [dict(last, end=int(total), peak=float(last["peak"] if peak is None else peak))]
    start_lr = lr_at(schedule, step) if peak is None else peak
    return schedule + [dict(start=int(step), end=int(total), peak=float(start_lr), warmup=0)]
