"""The error a refused option raises, in a module of its own so that every part that checks its
options (:mod:`pyrovae.data`, :mod:`pyrovae.objectives`, the model variants) can raise it without
importing :mod:`pyrovae.config`, which imports them."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid option, with a message saying which and what to use instead.

    :param option: the :class:`~pyrovae.config.Config` field at fault, if one is (the CLI names its
        flag).
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


__all__ = ["ConfigError"]
