"""Every error the zoo raises on purpose, under one base: the CLI catches SslZooError and prints its
one-line message. The module imports nothing from ssl_zoo, so any layer can raise these."""

from __future__ import annotations


class SslZooError(Exception):
    """A problem the user can fix; the message says what is wrong and what would be valid."""


class ConfigError(SslZooError, ValueError):
    """A configuration key or value is invalid; the message says which and what is allowed."""


class DataError(SslZooError, RuntimeError):
    """The dataset cannot be used (missing path, empty folder, unreadable image in 'error' mode)."""


class CheckpointError(SslZooError, RuntimeError):
    """No usable checkpoint, or one from another method/config."""


class RunDirBusyError(CheckpointError):
    """Another process is training in (and writing the checkpoints of) this run directory."""


class NonFiniteLossError(SslZooError, RuntimeError):
    """The loss or gradient norm became NaN/inf: the step is not applied and the run stops."""


class HubError(SslZooError, RuntimeError):
    """A hub, index entry, download or weights file that cannot be used (and why)."""


class JobError(SslZooError, RuntimeError):
    """A job id or run directory that names no submitted job, or a scheduler that refused a request."""
