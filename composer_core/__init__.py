"""xtm-composer: deploys connector containers from container registries onto Docker or Podman.

``composer_core`` is the core: the hook contract (:mod:`composer_core.hookspecs`), the plugin
manager, the value types, the settings, the credential chain, the deploy flow and the CLI. The
built-in plugins live in ``composer_plugins/`` and are registered exactly as third-party plugins are.
"""

import pluggy

from composer_core.hookspecs import PROJECT

__version__ = "0.1.0"

#: Marker for hook implementations: ``@hookimpl def composer_credential_providers(): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["hookimpl", "__version__"]
