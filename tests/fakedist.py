"""Throwaway distributions on ``sys.path``: real ``*.dist-info`` metadata for the plugin loader."""

from __future__ import annotations

import textwrap
from pathlib import Path

from composer_core.hookspecs import PROJECT


def write_dist(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str],
               version: str = "1.0") -> Path:
    """Write ``NAME-VERSION.dist-info`` with entry points in group ``xtm_composer``, and modules."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{PROJECT}]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


GOOD = '''
import click
from composer_core import hookimpl
from composer_core.types import CredentialProvider, Credentials, Found, NotFound

def lookup(request):
    if request.registry != "vault.example.com":
        return NotFound("vault holds only vault.example.com")
    return Found(Credentials(registry=request.registry, source="vault", username="robot",
                             password="vault-secret-0xA1", key="kv/registry"), "kv/registry")

@hookimpl
def composer_credential_providers():
    return CredentialProvider(name="vault", lookup=lookup)

@hookimpl
def composer_register_commands(cli):
    @cli.command(name="vault-status")
    def vault_status():
        "Say whether the vault answers."
        click.echo("vault ok")
'''

BROKEN = '''
raise ImportError("fake_broken needs a library that is not installed")
'''

BLOCKED = '''
raise RuntimeError("a disabled plugin must never be imported")
'''

MISSPELLED = '''
from composer_core import hookimpl

@hookimpl
def composer_credential_provider():  # missing the final s
    return []
'''

DUPLICATE_PROVIDER = '''
from composer_core import hookimpl
from composer_core.types import CredentialProvider, NotFound

@hookimpl
def composer_credential_providers():
    return CredentialProvider(name="vault", lookup=lambda request: NotFound("never"))
'''

COMMANDS = '''
import click
from composer_core import hookimpl

@click.command(name="hello")
def hello():
    "Say hello."
    click.echo("hello from COMMANDS")

@hookimpl
def composer_commands():
    return [hello]
'''

OTHER_HELLO = '''
import click
from composer_core import hookimpl

@hookimpl
def composer_commands():
    return click.Command("hello", callback=lambda: click.echo("hello from OTHER_HELLO"))
'''

BUILTIN_NAME = '''
import click
from composer_core import hookimpl

@hookimpl
def composer_commands():
    return click.Command("config", callback=lambda: click.echo("not the built-in"))
'''

LEGACY_NO_ARGUMENT = '''
from composer_core import hookimpl

@hookimpl
def composer_register_commands():  # takes fewer arguments than the spec names, as pluggy allows
    return None
'''

WRAPPER = '''
from composer_core import hookimpl

@hookimpl(wrapper=True)
def composer_credential_providers():
    result = yield
    return result
'''

HOOKWRAPPER = '''
from composer_core import hookimpl

@hookimpl(hookwrapper=True)
def composer_runtime_backends():
    yield
'''

BAD_NAME = '''
from composer_core import hookimpl
from composer_core.types import CredentialProvider, NotFound

@hookimpl
def composer_credential_providers():
    return CredentialProvider(name="Vault ", lookup=lambda request: NotFound("never"))
'''

DOCKER_BACKEND = '''
from composer_core import hookimpl
from composer_core.types import RuntimeBackend

def connect(settings):
    raise RuntimeError("a clashing backend must never be connected")

@hookimpl
def composer_runtime_backends():
    return RuntimeBackend(name="docker", connect=connect)
'''

SLOW_IMPORT = '''
import time

from composer_core import hookimpl
from composer_core.types import CredentialProvider, NotFound

time.sleep(0.3)  # widens the window in which other threads ask a manager that is still loading

@hookimpl
def composer_credential_providers():
    return CredentialProvider(name="slow", lookup=lambda request: NotFound("never"))
'''
