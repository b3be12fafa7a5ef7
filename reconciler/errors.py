"""Errors that reach the user: one clear line, optional details, a documented exit code.

Exit codes (docs/design.md): 0 ok, 1 error/failed/invalid, 2 changes or drift (when asked),
3 blocked (approvals or deploy window), 4 locked or state moved.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4


class ReconcilerError(Exception):
    """An expected failure: printed as one line (plus details), never as a traceback."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(ReconcilerError):
    """reconciler.yaml, a flag or an environment variable is wrong."""


class GitError(ReconcilerError):
    """The manifests repo cannot be read or written as asked."""


class StateError(ReconcilerError):
    """The state store cannot be read or written."""


class StateMovedError(StateError):
    """State changed since a plan was made (or a lease was lost): re-plan."""

    exit_code = EXIT_LOCKED


class LockedError(StateError):
    """Another run holds the environment's lock."""

    exit_code = EXIT_LOCKED


class ProviderError(ReconcilerError):
    """A provider refused or failed a call; the message names the provider and URL."""


class ApprovalSourceError(ReconcilerError):
    """The forge API could not be asked; the gate fails closed."""
