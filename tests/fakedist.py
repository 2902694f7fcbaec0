"""Throwaway distributions on ``sys.path``: real ``*.dist-info`` metadata for the plugin loader."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_dist(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str],
               version: str = "1.0") -> Path:
    """Write ``NAME-VERSION.dist-info`` with entry points in group ``xtm_composer``, and modules."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[xtm_composer]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
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
