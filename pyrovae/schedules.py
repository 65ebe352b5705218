"""KL schedules: which β (and which capacity C) to pass at a point of training.

β is an argument of the model and guide, not a loss (see :mod:`pyrovae.objectives`); these say
its value at fractional epoch ``t``.
"""

from __future__ import annotations


def linear_warmup(t: float, warmup: float, beta_max: float = 1.0) -> float:
    """β rising linearly from 0 to ``beta_max`` over ``warmup`` epochs (Sønderby et al. 2016).

    >>> linear_warmup(2.5, warmup=10)
    0.25
    """
    return beta_max * min(1.0, t / warmup)


def cyclical(t: float, period: float, beta_max: float = 1.0, ramp: float = 0.5) -> float:
    """β repeating a linear rise over the first ``ramp`` of each ``period``, then held at
    ``beta_max`` for the rest (Fu et al. 2019).

    >>> cyclical(12.5, period=10), cyclical(17.0, period=10)
    (0.5, 1.0)
    """
    phase = (t % period) / period
    return beta_max * min(1.0, phase / ramp)


def capacity_at(t: float, c_max: float, epochs: float) -> float:
    """C(t) rising linearly from 0 to ``c_max`` nats over ``epochs`` (Burgess et al. 2018).

    >>> capacity_at(5.0, c_max=20.0, epochs=10.0)
    10.0
    """
    return c_max * min(1.0, t / epochs)


def beta_at(schedule: str, beta: float, warmup: float, t: float) -> float:
    """β at fractional epoch ``t`` of a ``"constant"``, ``"linear"`` or ``"cyclical"`` schedule
    whose maximum is ``beta``.

    >>> beta_at("linear", 2.0, 10.0, 0.0), beta_at("constant", 2.0, 10.0, 0.0)
    (0.0, 2.0)
    """
    if schedule == "linear":
        return linear_warmup(t, warmup, beta)
    if schedule == "cyclical":
        return cyclical(t, warmup, beta)
    return beta


def settled_epoch(options) -> float:
    """The epoch from which β and C keep their final values: the end of a linear warm-up or of
    the capacity's rise, whichever is later (0 without either; a cyclical β never settles, so
    every epoch counts). ``best.pt`` and ``--patience`` count only the epochs from it on.

    :param options: a :class:`~pyrovae.config.Config`, or any object with its fields
        ``beta_schedule``, ``warmup_epochs``, ``capacity`` and ``capacity_epochs``.

    >>> from pyrovae.config import Config
    >>> settled_epoch(Config(beta_schedule="linear", warmup_epochs=20))
    20.0
    >>> settled_epoch(Config(capacity=25.0, capacity_epochs=12, elbo="trace"))
    12.0
    """
    warmup = options.warmup_epochs if options.beta_schedule == "linear" else 0.0
    rise = options.capacity_epochs if options.capacity is not None else 0.0
    return float(max(warmup, rise))


def settled_rows(rows: list[dict], settled: float) -> list[dict]:
    """The ``metrics.csv`` rows ``best.pt`` is chosen from: those of the epochs from ``settled`` on,
    or the last one while training has not reached it."""
    return [r for r in rows if int(r["epoch"]) >= settled] or rows[-1:]


__all__ = ["beta_at", "capacity_at", "cyclical", "linear_warmup", "settled_epoch", "settled_rows"]
