"""Built-in image resolver ``registry-prefix``: XTM Composer's private-registry prefix.

An image that names no registry (``connector-misp:5.0.0``, ``myorg/connector:1.0``) is pulled from
``opencti.daemon.docker.registry.url`` when it is set. An image that names one
(``localhost:5000/foo``, ``docker.io/alpine``) is left alone: no double prefix.
"""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.images.reference import full_image_name, normalize_registry_url
from composer_core.settings import Settings
from composer_core.types import ImageResolver, Rewrite

SETTING = "opencti.daemon.docker.registry.url"


def prefix_registry(image: str, settings: Settings) -> Rewrite | None:
    url = settings.get(SETTING)
    if not url:
        return None
    registry = normalize_registry_url(url)
    resolved = full_image_name(image, registry)
    if resolved == image:
        return None
    return Rewrite(resolved, f"image names no registry: prefixed with {registry} ({SETTING})")


@hookimpl
def composer_image_resolvers() -> ImageResolver:
    return ImageResolver(name="registry-prefix", resolve=prefix_registry,
                         description="prefix images that name no registry with the configured one")
