"""Errors a user can act on.

Every error the CLI shows is a :class:`ComposerError`: one readable message saying what failed and
why, an optional ``hint`` saying what to do next, and a stable exit code (documented in the README).
The CLI prints them without a traceback.
"""

from __future__ import annotations


class ComposerError(Exception):
    """Base of every error xtm-composer reports to a user."""

    exit_code = 1
    #: a short stable identifier, used by ``--json`` outputs
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def to_dict(self) -> dict[str, object]:
        return {"error": self.kind, "message": self.message, "hint": self.hint}


class UsageError(ComposerError):
    """Bad input on the command line or in a file the user handed us."""

    exit_code = 2
    kind = "usage"


class SettingsError(UsageError):
    """The merged settings are invalid; the message names the key and where it came from."""

    kind = "settings"


class PluginError(ComposerError):
    """A plugin failed to load (strict mode), or two plugins claim the same name."""

    exit_code = 3
    kind = "plugin"


class InvalidImage(UsageError):
    """The image a user or a connector named is not a valid reference."""

    kind = "invalid-image"


class CredentialsError(ComposerError):
    """The credential chain could not produce a credential it was required to."""

    exit_code = 4
    kind = "credentials"
