"""Small helpers over :mod:`pyro.distributions`."""

from __future__ import annotations

import pyro.distributions as dist


def to_event(base: dist.Distribution, n: int) -> dist.Distribution:
    """``base.to_event(n)``: the last ``n`` batch dimensions of ``base`` as one event."""
    return base.to_event(n)
