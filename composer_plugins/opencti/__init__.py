"""Built-in desired-state source ``opencti``: the OpenCTI platform, as XTM Composer serves it.

It registers as the platform's connector manager, lists the managed connectors, decrypts their
configuration with the manager's private key, lets the fleet deploy them, and reports status, logs
and health back (docs/opencti.md). Modules: ``config`` (settings), ``client`` (the seven GraphQL
operations), ``crypto`` (the key and the platform's encryption), ``mapping`` (listing ->
connectors), ``source`` (the loop side), ``cli`` (``opencti status``, ``keygen``). Nothing heavy
(``requests``, ``cryptography``) is imported before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from composer_core import hookimpl
from composer_core.records import DesiredStateSource
from composer_core.settings import SettingsSpec


def _open(settings: Any, options: Mapping[str, Any]) -> Any:
    from composer_plugins.opencti.source import open_opencti_source

    return open_opencti_source(settings, options)


@hookimpl
def composer_settings() -> SettingsSpec:
    from composer_plugins.opencti.config import settings_spec

    return settings_spec()


@hookimpl
def composer_sources() -> DesiredStateSource:
    return DesiredStateSource(name="opencti", open=_open, platform="opencti",
                              description="the OpenCTI platform at opencti.url, as its connector "
                                          "manager")


@hookimpl
def composer_commands() -> list[click.Command]:
    from composer_plugins.opencti.cli import keygen_command, opencti_group

    return [opencti_group, keygen_command]
