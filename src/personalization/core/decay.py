"""Time decay: the one definition used by the online learner, the nightly job and parity checks.

For a set of events ``i`` with signal weight ``w_i`` (``personalization_events.signal_weight``),
signal type ``s_i`` and time ``t_i``, the decayed score at time ``t`` is::

    score(t) = sum_i  scale(s_i) * |w_i| * 2 ** (-(t - t_i) / half_life(s_i))

The *sign and scale* come from the signal type (``skip`` is negative by default),
the *magnitude* from the event's ``signal_weight``; the half-life is per signal
type.  Events later than ``t`` count with a factor above 1, which keeps the sum
order-independent: any permutation of the same (deduplicated) events gives the
same value, so out-of-order and replayed-then-deduplicated streams agree with a
recomputation from ``personalization_events``.

A running sum is stored as ``(value, reference_time)``; moving it to another
reference time multiplies by ``2 ** (-(t_new - t_ref) / half_life)``.

User embeddings (the online learner) use the same weights with one half-life of their
own, ``DecayConfig.embedding_half_life_s``, so that a single running vector sum can be
rebased by one factor::

    sum(t) = sum_i  scale(s_i) * |w_i| * 2 ** (-(t - t_i) / embedding_half_life) * unit(e_i)

where ``unit(e_i)`` is the L2-normalised embedding of the event's content (negative
signals subtract).  Keeping the reference time at the latest ``t_i`` counted (a max,
hence order-independent) keeps every factor at most 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

DAY_S = 86_400.0


@dataclass(frozen=True)
class SignalDecay:
    """Scale (signed) and half-life of one signal type."""

    scale: float
    half_life_s: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale):
            raise ValueError("scale must be finite")
        if not (self.half_life_s > 0 and math.isfinite(self.half_life_s)):
            raise ValueError("half_life_s must be a positive number")


DEFAULT_SIGNALS: Mapping[str, SignalDecay] = {
    "view": SignalDecay(0.5, 7 * DAY_S),
    "read": SignalDecay(1.0, 14 * DAY_S),
    "complete": SignalDecay(1.5, 30 * DAY_S),
    "bookmark": SignalDecay(3.0, 90 * DAY_S),
    "share": SignalDecay(4.0, 60 * DAY_S),
    "skip": SignalDecay(-1.0, 3 * DAY_S),
}


@dataclass(frozen=True)
class DecayConfig:
    """Per-signal-type decay with a fallback for types not listed."""

    signals: Mapping[str, SignalDecay] = field(default_factory=lambda: dict(DEFAULT_SIGNALS))
    default: SignalDecay = SignalDecay(1.0, 14 * DAY_S)
    # One half-life for the whole user embedding (see the module docstring).
    embedding_half_life_s: float = 30 * DAY_S

    def __post_init__(self) -> None:
        if not (self.embedding_half_life_s > 0 and math.isfinite(self.embedding_half_life_s)):
            raise ValueError("embedding_half_life_s must be a positive number")

    def for_signal(self, signal_type: str) -> SignalDecay:
        """The decay parameters of ``signal_type``."""
        return self.signals.get(signal_type, self.default)

    def weight(self, signal_type: str, signal_weight: float) -> float:
        """The signed, scaled weight of one event (before decay)."""
        return self.for_signal(signal_type).scale * abs(float(signal_weight))

    def factor(self, signal_type: str, dt_s: float) -> float:
        """``2 ** (-dt / half_life)``: how much an event ``dt_s`` seconds old still counts."""
        return math.pow(2.0, -dt_s / self.for_signal(signal_type).half_life_s)


DEFAULT_DECAY = DecayConfig()


def decayed(weight: float, occurred_at: datetime, at: datetime, half_life_s: float) -> float:
    """One already-scaled weight decayed from ``occurred_at`` to ``at``."""
    return weight * math.pow(2.0, -(at - occurred_at).total_seconds() / half_life_s)


def event_score(cfg: DecayConfig, signal_type: str, signal_weight: float, occurred_at: datetime, at: datetime) -> float:
    """Contribution of one event to the decayed score at ``at``."""
    d = cfg.for_signal(signal_type)
    return decayed(d.scale * abs(float(signal_weight)), occurred_at, at, d.half_life_s)


def rebase(value: float, ref: datetime, new_ref: datetime, half_life_s: float) -> float:
    """Move a running sum from reference time ``ref`` to ``new_ref``."""
    return value * math.pow(2.0, -(new_ref - ref).total_seconds() / half_life_s)
