"""Choosing the model to ship, as pure functions: the most accurate candidate that meets every budget.

    budgets = Budgets(max_bytes=parse_size("5MB"), max_latency_ms=parse_latency("1ms"), max_drop=1.0)
    selection = select(candidates, budgets)   # .chosen (None when nothing qualifies), .checks, .explanation

A candidate meets a budget when its figure is at most the limit: bytes of the model file on disk, batch-1 p50
latency on this CPU (ms), and accuracy drop vs the teacher (points; for a language model, `quality="perplexity"`,
its per-word perplexity increase in percent, named so in every message). Among the candidates that meet every
budget the most accurate wins; ties go to the faster, then the smaller. When none meets every budget, the
explanation names each budget that no candidate met, with the one that came closest on it, or — when every
budget is met by some candidate but never all by one — the candidate that misses by the least (excess relative
to each limit, summed).

`violations(candidate, budgets)` gives each budget's excess (> 0: missed by that much; <= 0: met, with that much
to spare). That is the form a constrained search takes (Optuna's `constraints_func`, with accuracy and latency
as the objectives and size as a constraint): a later search generates candidates and calls the same `select`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmkit.errors import UserError

SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
LATENCY_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}  # -> milliseconds
_AMOUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([^\d\s.]*)")
_OFF = ("none", "off", "")
TOLERANCE = 1e-9  # a figure exactly at its limit meets it, whatever float rounding did to the difference


@dataclass(frozen=True)
class Candidate:
    """A deployable model, as the benchmark measured it."""

    name: str
    accuracy: float  # fraction of the test set
    drop_points: float  # 100 * (teacher accuracy - accuracy); negative when it beats the teacher
    latency_ms: float  # batch-1 p50 on this CPU
    bytes: int  # the model file on disk
    parameters: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class Budgets:
    """Upper limits; None means no budget on that axis."""

    max_bytes: int | None = None
    max_latency_ms: float | None = None
    max_drop: float | None = None  # points of accuracy
    quality: str = "accuracy"  # what max_drop bounds: "accuracy" (points) or "perplexity" (a language model's increase, %)


@dataclass(frozen=True)
class Check:
    """One candidate against the budgets: each budget's excess (see `violations`)."""

    candidate: Candidate
    violations: dict[str, float]

    @property
    def meets(self) -> bool:
        return all(v <= TOLERANCE for v in self.violations.values())

    @property
    def missed(self) -> list[str]:
        return [axis for axis, v in self.violations.items() if v > TOLERANCE]


@dataclass(frozen=True)
class Selection:
    chosen: Candidate | None
    checks: list[Check]  # in candidate order
    explanation: str  # one or two sentences: why this one, or why none


def bytes_text(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _ms(x: float) -> str:
    return f"{x:.3g} ms"


def _points(x: float) -> str:
    return f"{x:.2f} points"


def _percent(x: float) -> str:
    return f"{x:.2f}%"


# budget axis -> (Budgets field, Candidate field, what it is, formatter)
AXES = {
    "size": ("max_bytes", "bytes", "size on disk", bytes_text),
    "latency": ("max_latency_ms", "latency_ms", "batch-1 p50 latency", _ms),
    "accuracy drop": ("max_drop", "drop_points", "accuracy drop vs the teacher", _points),
}
# a language model's quality budget reads the same field: its per-word perplexity increase vs the teacher, in %
PERPLEXITY_AXIS = ("perplexity increase", ("max_drop", "drop_points", "per-word perplexity increase vs the teacher", _percent))


def axes(budgets: Budgets) -> dict[str, tuple]:
    """The budget axes in `budgets`' terms: name -> (Budgets field, Candidate field, what it measures, format)."""
    if budgets.quality != "perplexity":
        return AXES
    return dict(PERPLEXITY_AXIS if name == "accuracy drop" else (name, spec) for name, spec in AXES.items())


# ------------------------------------------------------------------------------------------ budget strings


def parse_size(text: str | None, flag: str = "--budget-size") -> int | None:
    """'5MB' -> 5_000_000 bytes (kB/MB/GB decimal, KiB/MiB/GiB binary); None or 'none' -> no budget."""
    value = _amount(text, flag, SIZE_UNITS, "a size like 5MB, 500kB or 1.5GB")
    return None if value is None else int(round(value))


def parse_latency(text: str | None, flag: str = "--budget-latency") -> float | None:
    """'1ms' -> 1.0, '500us' -> 0.5 (milliseconds); None or 'none' -> no budget."""
    return _amount(text, flag, LATENCY_UNITS, "a latency like 1ms, 500us or 0.5s")


def _amount(text: str | None, flag: str, units: dict[str, float], example: str) -> float | None:
    if text is None or str(text).strip().lower() in _OFF:
        return None
    raw = str(text).strip()
    match = _AMOUNT.fullmatch(raw)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in units:
        why = "no unit" if match and not unit else f"unknown unit {unit!r}" if match else "not a number with a unit"
        raise UserError(f"{flag} {raw!r}: {why}: write {example} (units: {', '.join(u for u in units if u != 'µs')}), or none for no budget")
    value = float(match.group(1)) * units[unit]
    if value <= 0:
        raise UserError(f"{flag} {raw!r}: must be more than 0: write {example}, or none for no budget")
    return value


def describe(budgets: Budgets) -> str:
    """'size ≤ 5 MB, latency ≤ 1 ms, accuracy drop ≤ 1.00 points' (or 'no budgets')."""
    parts = [f"{axis} ≤ {fmt(getattr(budgets, limit))}" for axis, (limit, _, _, fmt) in axes(budgets).items() if getattr(budgets, limit) is not None]
    return ", ".join(parts) or "no budgets"


# ------------------------------------------------------------------------------------------ the rule


def violations(candidate: Candidate, budgets: Budgets) -> dict[str, float]:
    """Per budget that is set: the candidate's figure minus the limit (> 0: missed; <= 0: met)."""
    return {
        axis: float(getattr(candidate, field)) - float(getattr(budgets, limit))
        for axis, (limit, field, _, _) in axes(budgets).items()
        if getattr(budgets, limit) is not None
    }


def select(candidates: list[Candidate], budgets: Budgets, prefer: str = "accuracy") -> Selection:
    """The most accurate candidate meeting every budget (ties: faster, then smaller), or None with the reason.
    `prefer="speed"`: the fastest one meeting every budget (ties: smaller, then more accurate) — for language models,
    whose quality budget already bounds how much worse than the teacher a candidate may be."""
    if not candidates:
        raise ValueError("select() needs at least one candidate")
    checks = [Check(c, violations(c, budgets)) for c in candidates]
    passing = [check.candidate for check in checks if check.meets]
    if passing and prefer == "speed":
        chosen = min(passing, key=lambda c: (c.latency_ms, c.bytes, -c.accuracy))
        return Selection(chosen, checks, f"{chosen.name} is the fastest of the {len(passing)} of {len(candidates)} candidates that meet {describe(budgets)}.")
    if passing:
        chosen = max(passing, key=lambda c: (c.accuracy, -c.latency_ms, -c.bytes))
        return Selection(chosen, checks, f"{chosen.name} is the most accurate of the {len(passing)} of {len(candidates)} candidates that meet {describe(budgets)}.")
    return Selection(None, checks, _explain(checks, budgets))


def _explain(checks: list[Check], budgets: Budgets) -> str:
    """Which budgets nothing met (and the closest candidate on each), then the closest candidate overall."""
    sentences, named = [], axes(budgets)
    for axis in checks[0].violations:
        if any(check.violations[axis] <= TOLERANCE for check in checks):
            continue
        limit, field, what, fmt = named[axis]
        best = min(checks, key=lambda check: check.violations[axis]).candidate
        sentences.append(f"No candidate meets the {axis} budget ({what} ≤ {fmt(getattr(budgets, limit))}): the closest is {best.name} at {fmt(getattr(best, field))}.")
    if not sentences:
        sentences.append(f"Every budget is met by some candidate, but none meets all of {describe(budgets)} at once.")

    def relative_miss(check: Check) -> float:
        # excess as a fraction of each limit (the quality budget: of at least 1 point or percent, since its limit may be 0)
        return sum(max(0.0, v) / max(float(getattr(budgets, named[axis][0])), 1.0 if named[axis][0] == "max_drop" else 1e-12) for axis, v in check.violations.items())

    closest = min(checks, key=relative_miss)
    misses = ", ".join(
        f"{axis} by {named[axis][3](closest.violations[axis])} ({named[axis][3](getattr(closest.candidate, named[axis][1]))})" for axis in closest.missed
    )
    sentences.append(f"Closest overall: {closest.candidate.name}, which misses {misses}.")
    return " ".join(sentences)
