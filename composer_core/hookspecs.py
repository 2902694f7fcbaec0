"""The hook contract of xtm-composer: everything a plugin can contribute.

A plugin is a module (or any object) exposing functions marked with
:data:`composer_core.hookimpl`, registered under the entry-point group ``xtm_composer``
(:data:`PROJECT`)::

    # pyproject.toml of a third-party plugin
    [project.entry-points.xtm_composer]
    vault = "composer_vault"

Rules every hook follows:

* Every hook is prefixed ``composer_`` and is called with keyword arguments only. Implementations
  may accept fewer arguments than the spec names (each one receives only the arguments it names,
  as pluggy does), and must not give them defaults (pluggy never passes them).
* Hooks that contribute things return a record (or a list of records) carrying a ``name``
  (:mod:`composer_core.records`; ``composer_commands`` returns ``click.Command`` objects, named by
  their own ``name``). A name is lowercase letters, digits, ``-`` and ``_``, starting with a letter,
  at most 63 characters; it is normalised to Unicode NFKC, never lowercased or stripped, so a
  record with any other name (``"Vault "``) fails its plugin at load, naming it.
* Names are user-facing (settings, ``--runtime``, ``xtm-composer plugins``) and must be unique across
  all installed plugins. When two plugins contribute the same name, the one loaded later is
  recorded ``failed`` naming both distributions, and everything else keeps working; using the
  contested name (naming it in ``auth.chain``, ``--runtime``...) is an error (exit 3), as is any
  such failure in strict mode. Plugins load in this order: the entry points of xtm-composer itself,
  then the other distributions by name, each one's entry points by name.
* **Order is never the registration order.** pluggy calls the last registered implementation first;
  xtm-composer ignores that and walks contributions in the order the *settings* name them
  (``auth.chain``, ``images.resolvers``, ``opencti.daemon.auto_order``). A plugin cannot put itself
  first; a user can. ``tryfirst`` / ``trylast`` are accepted and have no effect on any of this.
* Wrappers (``wrapper=True``, ``hookwrapper=True``) are refused: the core calls every
  implementation itself, one by one, to attribute what it returns, so there is no call for a
  wrapper to wrap. A plugin with a wrapper is recorded ``failed`` with that reason.
* Heavy libraries (the Docker SDK, podman-py...) are imported inside the functions that use them,
  never at module level: ``xtm-composer --help`` and ``xtm-composer plugins`` load every plugin and
  call every hook below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from composer_core.records import (
        CredentialProvider,
        DesiredStateSource,
        ImageResolver,
        RuntimeBackend,
    )
    from composer_core.settings.spec import SettingsSpec

#: The pluggy project name, which is also the entry-point group plugins register under.
PROJECT = "xtm_composer"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def composer_image_resolvers() -> ImageResolver | list[ImageResolver]:
    """Contribute image resolvers: rules that turn the image a connector names into the exact
    reference to pull.

    Called once per process, when the plugins load. Return one
    :class:`~composer_core.records.ImageResolver` or a list of them.

    The core applies the resolvers named in the setting ``images.resolvers`` (default
    ``[registry-prefix, mirrors]``), in that order, each receiving the image text as the previous one
    left it. ``resolve(image, settings)`` returns a :class:`~composer_core.types.Rewrite` (the new
    image text and a one-line reason, shown by ``image resolve`` and ``auth explain``) or ``None`` to
    leave the image unchanged. The result of every rewrite must be a valid reference, or resolution
    fails naming the resolver.

    Example::

        @hookimpl
        def composer_image_resolvers():
            def pin_team_tag(image, settings):
                if image.endswith(":latest"):
                    return Rewrite(image[:-len("latest")] + "stable", "latest is not allowed here")
                return None
            return ImageResolver(name="no-latest", resolve=pin_team_tag)
    """


@hookspec
def composer_credential_providers() -> CredentialProvider | list[CredentialProvider]:
    """Contribute credential providers: the links of the registry-credential chain.

    Called once per process, when the plugins load. Return one
    :class:`~composer_core.records.CredentialProvider` or a list.

    For every pull, the core walks the providers named in the setting ``auth.chain`` (default
    ``[config, docker-config, keychain, containers-auth, anonymous]``) in that order, calling
    ``lookup(request)`` with a :class:`~composer_core.types.CredentialRequest` (the resolved image,
    its registry, the settings and the environment). The **first** provider answering
    :class:`~composer_core.types.Found` wins and the walk stops; :class:`~composer_core.types.NotFound`
    and :class:`~composer_core.types.Failed` are recorded in the trace (``auth explain``, auth
    errors) and the walk goes on. A provider must only answer for the registry (and path scope) its
    credentials belong to, and should not raise: an exception is recorded as an error of its step.

    The core sets ``Credentials.source`` of the answer to the provider's ``name``, whatever the
    provider put there: ``auth explain``, the deploy log and ``forget`` always name the provider that
    actually answered.

    ``forget(credentials)``, when given, is called after a registry rejected credentials this
    provider supplied (drop them from any cache).

    Example::

        @hookimpl
        def composer_credential_providers():
            def lookup(request):
                token = vault.read(f"registries/{request.registry}")
                if token is None:
                    return NotFound(f"no vault entry for {request.registry}")
                return Found(Credentials(registry=request.registry, source="vault",
                                         username="ci", password=token,
                                         key=f"registries/{request.registry}"),
                             detail="vault path registries/" + request.registry)
            return CredentialProvider(name="vault", lookup=lookup)

    The user then adds ``vault`` to ``auth.chain`` where it should be asked.
    """


@hookspec
def composer_runtime_backends() -> RuntimeBackend | list[RuntimeBackend]:
    """Contribute backends: container engines and orchestrators.

    Called once per process, when the plugins load. Return one
    :class:`~composer_core.records.RuntimeBackend` or a list.
    ``connect(settings)`` returns a connected :class:`~composer_core.workload.Backend` or raises a
    :class:`~composer_core.errors.ComposerError` saying why the engine cannot be reached. The core
    hands a backend resolved :class:`~composer_core.workload.Workload` values (name, connector id,
    the exact image, the ONE credential the chain found for its registry or explicitly none, TLS,
    env, labels, started / stopped, config hash) and reads back
    :class:`~composer_core.workload.Observed` ones. A backend implements (each method documented
    in :mod:`composer_core.workload` and ``docs/plugins.md``, "The backend contract"):

    * ``observe(labels)``: every workload carrying all ``labels``; one request on a single host,
      at most two on an orchestrator (a steady fleet pass costs exactly this);
    * ``apply(workload, current, progress=)``: create, update or replace (with rollback), started
      or stopped, sending exactly ``workload.credentials`` for the image's registry;
    * ``set_state(current, state)``, ``remove(current)``, ``logs(current, tail)``, ``close()``;
    * ``name``, ``endpoint`` (never with credentials) and ``capabilities`` (``pull``,
      ``replicas``, ``digest-pinning``...).

    Each raises a ``ComposerError`` subclass, never an SDK exception (registry errors explained
    with the workload's credential trace: exit codes 6/7/8/9/10/15). A container engine need not
    write all that: it implements the container-level :class:`~composer_core.types.Runtime`
    (``pull`` with exactly one credential or none, ``create``, ``start``, ``stop``, ``remove``,
    ``rename``, ``inspect``, ``list`` by label, ``logs``, ``close``) and returns it in the core's
    :class:`~composer_core.engine.container_backend.ContainerBackend`, which brings the deploy flow
    (one pull per image per pass, replace with rollback, restart policy). Check a backend with the
    contract test kit, :mod:`composer_core.testing`.

    The backend used is the one named by ``--runtime`` or the setting ``opencti.daemon.selector``;
    ``auto`` tries the backends named in ``opencti.daemon.auto_order`` (default
    ``[docker, podman]``), in that order, and uses the first that connects: add a third-party
    engine's name there for ``auto`` to consider it.

    Example::

        @hookimpl
        def composer_runtime_backends():
            return RuntimeBackend(
                name="nerdctl",
                connect=lambda settings: ContainerBackend(NerdctlRuntime.connect(settings)))
    """


@hookspec
def composer_commands() -> click.Command | list[click.Command]:
    """Contribute subcommands of the ``xtm-composer`` command line.

    Called once per process, when the plugins load. Return one :class:`click.Command` (or
    :class:`click.Group`) or a list; each is added under its own ``name``. A name taken by a
    built-in command fails the plugin (the built-in keeps working); two plugins adding the same
    name are a clash like any other (the later one fails; running the command is an error).
    ``xtm-composer plugins --json`` shows which plugin contributed which command. Commands obtain
    the settings and the plugins through :func:`composer_core.cli.context.get_app`.

    Example::

        @click.command(name="vault-status")
        def vault_status():
            "Show whether the vault is reachable."
            click.echo("ok")

        @hookimpl
        def composer_commands():
            return vault_status
    """


@hookspec
def composer_register_commands(cli: click.Group) -> None:
    """Deprecated: return the commands from :func:`composer_commands` instead. Still honoured for
    one release; a plugin implementing it is warned about (a ``DeprecationWarning`` and a log
    warning, naming the plugin).

    Called once per process with a :class:`click.Group` to add commands to (``cli.command()``,
    ``cli.add_command()``); what the plugin adds there is checked and attributed exactly as
    :func:`composer_commands`' records are.
    """


@hookspec
def composer_settings() -> SettingsSpec | list[SettingsSpec]:
    """Declare the settings a plugin reads: their defaults, their validator, the keys it owns.

    Called once per process, when the settings are loaded (before any other hook is asked).
    Return one :class:`~composer_core.settings.spec.SettingsSpec` or a list of them:

    * ``defaults``, a nested mapping shaped like a settings file, is merged as a layer right after
      the embedded defaults: every key the plugin reads then holds a value, so the plugin calls
      ``settings.get("auth.helper_timeout")`` without a default of its own, and
      ``xtm-composer config show`` prints it;
    * ``validator(settings, problems)`` runs at every start, after the core's checks, and calls
      ``problems.add(key, message)`` for each problem; the core adds the layer the key came from
      and the plugin's name, and exits 2 listing every problem. A message never quotes a value
      that may be secret (describe it with :func:`composer_core.settings.describe`);
    * ``owns`` lists the dotted keys the plugin reads, each covering everything under it. Keys no
      spec and no core setting owns are reported as unknown, with the nearest known key.

    A spec may not own a core key nor another plugin's key: it is then ignored with a warning.
    The keys of a disabled plugin are accepted, and listed as unused by ``config check``.

    Example::

        @hookimpl
        def composer_settings():
            def validate(settings, problems):
                check_number(settings, problems, "auth.vault.timeout", what="seconds",
                             minimum=0, above_minimum=True, maximum=600)
                if not str(settings.get("auth.vault.address")).startswith("https://"):
                    problems.add("auth.vault.address", "must be an https:// URL")

            return SettingsSpec(name="vault", owns=("auth.vault",),
                                defaults={"auth": {"vault": {"address": "https://vault:8200",
                                                             "timeout": 5}}},
                                validator=validate)

    Settings live under the sections ``manager``, ``opencti``, ``auth``, ``images`` and
    ``plugins``: a plugin's own keys go under one of them, as ``auth.vault`` does here.
    """


@hookspec
def composer_sources() -> DesiredStateSource | list[DesiredStateSource]:
    """Contribute desired-state sources: where ``apply`` and ``run`` learn which connectors to run.

    Called once per process, when the plugins load. Return one
    :class:`~composer_core.records.DesiredStateSource` or a list. Built-ins: ``file`` (the
    connectors file of ``-f FILE``) and ``opencti`` (the OpenCTI platform, as XTM Composer serves it).

    ``apply`` and ``run`` use the source named by the setting ``manager.source`` (default ``file``);
    ``-f FILE`` means ``file``. They call ``open(settings, options)`` once, where ``options`` is what
    the command line passed (``{"file": PATH}`` or ``{}``); it returns a
    :class:`composer_core.fleet.sources.Source`, or raises a
    :class:`~composer_core.errors.ComposerError` (exit 2 for bad settings). Then, for every pass:

    * ``desired()`` returns a :class:`~composer_core.fleet.sources.DesiredState`: the connectors to
      run, and the ones *held* (known but not to be deployed or changed now, such as a connector
      whose secret cannot be decrypted: its container, if any, is kept). Raising
      :class:`~composer_core.fleet.sources.SourceUnavailable` skips the pass: nothing is deployed,
      changed or removed (a failed or partial listing must raise, never return less);
    * the core plans and runs the pass over the containers this source **owns**: those of
      ``manager.id`` whose ``opencti-platform`` label (or ``xtm-platform``) is the record's
      ``platform`` (no such label when ``platform`` is ``None``). A source never touches another's
      containers, so several sources can serve one ``manager.id`` side by side, one process each;
      a connector whose name is held by another source's container is held, not deployed;
    * ``observe(observation)`` receives the pass and the workloads as observed after it (a
      :class:`~composer_core.fleet.sources.Observation`), to report status, logs or health back;
      it should not raise (an exception is logged and the loop goes on);
    * ``close()`` when the command ends.

    Example::

        @hookimpl
        def composer_sources():
            def open_vault_fleet(settings, options):
                return VaultFleet(settings.get("vault.url"))  # desired(), observe(), close()
            return DesiredStateSource(name="vault-fleet", open=open_vault_fleet, platform="vault",
                                      description="connectors listed in the team's vault")

    The user then sets ``manager.source: vault-fleet``.
    """
