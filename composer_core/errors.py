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


class RuntimeUnavailable(ComposerError):
    """No container engine answers at the configured endpoint."""

    exit_code = 5
    kind = "runtime-unavailable"


class RegistryError(ComposerError):
    """A pull failed at the registry. Messages carry the credential trace (what was sent, from where).
    The subclasses say why; this base is a failure the engine did not let us classify."""

    exit_code = 15
    kind = "registry"


class AuthenticationRequired(RegistryError):
    """The registry demands credentials and the pull was anonymous (no provider had any)."""

    exit_code = 6
    kind = "authentication-required"


class CredentialsRejected(RegistryError):
    """The registry rejected the credentials a provider supplied."""

    exit_code = 7
    kind = "unauthorized"


class RegistryUnreachable(RegistryError):
    """Nothing answers at the registry's address (connection refused, no route, DNS)."""

    exit_code = 8
    kind = "registry-unreachable"


class RegistryTLSError(RegistryError):
    """TLS failed: self-signed or unknown CA, or a plain-HTTP registry where TLS was expected."""

    exit_code = 9
    kind = "registry-tls"


class ImageNotFound(RegistryError):
    """The registry answered but has no such repository or tag."""

    exit_code = 10
    kind = "image-not-found"


class InsecureRegistryNotAllowed(RegistryError):
    """The settings mark a registry insecure but the Docker daemon does not allow it."""

    exit_code = 11
    kind = "insecure-not-allowed"


class ContainerError(ComposerError):
    """Creating, starting, stopping or removing a container failed."""

    exit_code = 12
    kind = "container"


class ContainerNotFound(ContainerError):
    """No container of this manager has that name."""

    exit_code = 13
    kind = "container-not-found"


class ApplyFailed(ComposerError):
    """A reconciliation pass finished, but at least one of its actions failed."""

    exit_code = 14
    kind = "apply-failed"
