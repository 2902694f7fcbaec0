"""Built-in image resolver ``registry-prefix``: XTM Composer's private-registry prefix.

An image that names no registry (``connector-misp:5.0.0``, ``myorg/connector:1.0``) is pulled from
the single registry block's url (``opencti.daemon.docker.registry.url``, or XTM Composer master's
``opencti.daemon.registry.server``) when it is set. An image that names one
(``localhost:5000/foo``, ``docker.io/alpine``) is left alone: no double prefix.
"""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.images.reference import full_image_name
from composer_core.settings import Settings
from composer_core.settings.registry import registry_settings
from composer_core.types import ImageResolver, Rewrite

SETTING = "opencti.daemon.docker.registry.url"


def prefix_registry(image: str, settings: Settings) -> Rewrite | None:
    primary = registry_settings(settings).primary
    if primary is None:
        return None
    resolved = full_image_name(image, primary.normalized)
    if resolved == image:
        return None
    setting = SETTING if primary.key.startswith("opencti.daemon.docker.") else f"{primary.key}.server"
    return Rewrite(resolved, f"image names no registry: prefixed with {primary.normalized} ({setting})")


@hookimpl
def composer_image_resolvers() -> ImageResolver:
    return ImageResolver(name="registry-prefix", resolve=prefix_registry,
                         description="prefix images that name no registry with the configured one")
