"""The records hooks contribute: small frozen values, each with a checked ``name``.

Every hook that contributes something returns one of these (or a list): an
:class:`ImageResolver`, a :class:`CredentialProvider`, a :class:`RuntimeBackend`, a
:class:`DesiredStateSource`; commands come as
``click.Command`` objects, which the plugin manager wraps in a :class:`PluginCommand`. They share
:class:`Record`, which normalises and checks ``name`` as the record is built, so that a bad name
fails the plugin at load, naming it, instead of surfacing later as an "unknown provider".

The name rule (:data:`NAME_RULE`): lowercase ASCII letters, digits, ``-`` and ``_``, starting with a
letter, at most 63 characters. The name is first normalised to Unicode NFKC (so that a compatibility
character such as a full-width letter becomes the letter it stands for); it is *not* lowercased or
stripped: ``"Vault "`` is refused, because a name that had to be repaired would differ from the one
the plugin's own documentation tells users to write in their settings.

``composer_core.types`` re-exports these classes: ``from composer_core.types import
CredentialProvider`` keeps working.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import click

    from composer_core.fleet.sources import Source
    from composer_core.settings import Settings
    from composer_core.types import CredentialRequest, Credentials, LookupResult, Rewrite
    from composer_core.workload import Backend

NAME_RULE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
NAME_RULE_TEXT = ("lowercase letters, digits, '-' and '_', starting with a letter, "
                  "at most 63 characters")


class InvalidName(ValueError):
    """A record's name breaks :data:`NAME_RULE`; the plugin that built it fails to load."""


def check_name(name: object, what: str) -> str:
    """``name`` normalised (NFKC) and checked against :data:`NAME_RULE`, or :class:`InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"{what} name must be a string, not {type(name).__name__} ({name!r})")
    normalised = unicodedata.normalize("NFKC", name)
    if not NAME_RULE.fullmatch(normalised):
        raise InvalidName(f"{what} name {name!r} is invalid: use {NAME_RULE_TEXT}")
    return normalised


@dataclass(frozen=True, slots=True)
class Record:
    """The base of every hook record: a ``name``, normalised and checked when the record is built."""

    name: str
    #: what this kind of record is called in messages
    kind: ClassVar[str] = "record"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_name(self.name, self.kind))

    @classmethod
    def coerce(cls, value: object) -> object:
        """Turn what a hook may return into a record; records pass through unchanged."""
        return value


@dataclass(frozen=True, slots=True)
class ImageResolver(Record):
    """A named rewrite rule applied to the image a connector names, in configured order.

    ``resolve(image, settings)`` receives the image text as the previous resolvers left it and
    returns a :class:`~composer_core.types.Rewrite`, or ``None`` to leave it unchanged.
    """

    resolve: Callable[[str, Settings], Rewrite | None]
    description: str = ""
    kind: ClassVar[str] = "image resolver"


@dataclass(frozen=True, slots=True)
class CredentialProvider(Record):
    """A named link of the credential chain.

    ``lookup`` answers :class:`~composer_core.types.Found`, ``NotFound`` or ``Failed`` and should not
    raise (an exception is recorded as an error of that step). ``forget`` is called when a registry
    rejected credentials this provider supplied, so that a cache can drop them.
    """

    lookup: Callable[[CredentialRequest], LookupResult]
    description: str = ""
    forget: Callable[[Credentials], None] | None = None
    kind: ClassVar[str] = "credential provider"


@dataclass(frozen=True, slots=True)
class RuntimeBackend(Record):
    """A named backend (a container engine, an orchestrator). ``connect(settings)`` returns a
    connected :class:`~composer_core.workload.Backend` (a container engine: its
    :class:`~composer_core.types.Runtime` in a
    :class:`~composer_core.engine.container_backend.ContainerBackend`) or raises
    :class:`composer_core.errors.ComposerError` saying why the engine cannot be reached."""

    connect: Callable[[Settings], Backend]
    description: str = ""
    kind: ClassVar[str] = "runtime backend"


@dataclass(frozen=True, slots=True)
class PluginCommand(Record):
    """A subcommand a plugin adds to ``xtm-composer``, under ``name``.

    ``composer_commands`` returns plain ``click.Command`` objects; the manager wraps each one, its
    own ``name`` becoming the record's.
    """

    command: click.Command
    kind: ClassVar[str] = "command"

    @classmethod
    def coerce(cls, value: object) -> object:
        import click

        if isinstance(value, click.Command):
            return cls(name=value.name or "", command=value)
        return value


@dataclass(frozen=True, slots=True)
class DesiredStateSource(Record):
    """A named source of desired state: where ``apply`` and ``run`` learn which connectors to run.

    ``open(settings, options)`` returns a :class:`composer_core.fleet.sources.Source` (it may raise
    :class:`composer_core.errors.ComposerError`, for example for invalid settings); ``options``
    holds what the command line passed (``{"file": "connectors.yaml"}`` for ``-f FILE``).
    ``platform`` is the value of the ``opencti-platform`` label on the containers the source
    deploys (``None``: no such label, as the ``file`` source's containers have always been), and so
    the ownership mark that keeps several sources under one ``manager.id`` from touching each
    other's containers.
    """

    open: Callable[[Settings, Mapping[str, Any]], Source]
    platform: str | None = None
    description: str = ""
    kind: ClassVar[str] = "desired-state source"
