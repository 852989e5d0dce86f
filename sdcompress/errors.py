"""Typed exceptions. Every user-facing failure is one of these, with a message that
names the received value and says how to fix it. The CLI prints ``str(exc)`` on one
line and exits non-zero; library callers catch the type they care about."""

from __future__ import annotations


class SdcompressError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(SdcompressError, ValueError):
    """A setting is out of range or of the wrong type (η ≤ 0, unknown recipe key, ...)."""


class DataError(SdcompressError, ValueError):
    """A dataset cannot be found, read, or split as asked."""


class ModelError(SdcompressError, ValueError):
    """A model cannot be found or loaded, or a parameter pattern matches nothing."""


class OfflineError(SdcompressError, OSError):
    """A hub model or dataset was asked for, but the hub is unreachable and nothing is cached."""


class DivergenceError(SdcompressError, RuntimeError):
    """Training produced a non-finite loss."""


class EstimatorError(SdcompressError, ValueError):
    """An estimator was asked for something it cannot do (m > d, empty batch stream, ...)."""


class PlanError(SdcompressError, ValueError):
    """A compression plan is invalid or cannot be read."""


class CompressionError(SdcompressError, ValueError):
    """A plan cannot be applied to a model."""


class OutputExistsError(SdcompressError, FileExistsError):
    """The output folder already holds a run and ``overwrite`` was not asked for."""


class OutputError(SdcompressError, OSError):
    """The output location cannot be written (a regular file, read-only, ...)."""


class FolderLockedError(SdcompressError, RuntimeError):
    """Another live process holds the run folder's lock."""


class UntrainedError(SdcompressError, RuntimeError):
    """Training ended at chance level, or no training was done (a dead or untrained network)."""


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; handled like Ctrl-C (clean-up runs, locks are released).

    A ``KeyboardInterrupt`` subclass so that every ``except KeyboardInterrupt`` and
    ``except BaseException`` clean-up path treats it the same way.
    """
