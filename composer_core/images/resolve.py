"""Image resolution: the image a connector names -> the exact reference to pull.

The resolvers named in ``images.resolvers`` run in that order, each on the text the previous one
left; every change is recorded as a :class:`~composer_core.types.ResolutionStep` so that
``image resolve``, ``auth explain`` and the deploy log can say which rule changed what.
"""

from __future__ import annotations

from collections.abc import Mapping

from composer_core.errors import ComposerError, InvalidImage, SettingsError
from composer_core.images.reference import ImageRef, InvalidReference
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings, name_list
from composer_core.types import ResolutionStep, ResolvedImage


def parse_image(text: str) -> ImageRef:
    try:
        return ImageRef.parse(text)
    except InvalidReference as exc:
        raise InvalidImage(f"invalid image {text!r}: {exc}",
                           hint="an image looks like name:tag, org/name:tag or "
                                "registry.example.com:5000/org/name:tag") from None


def ordered(settings: Settings, key: str, available: Mapping[str, object], plugins: Plugins,
            label: str) -> list[str]:
    """The names listed under ``key``, checked: unknown names fail loudly, disabled ones drop out."""
    names = name_list(settings, key)
    inactive = plugins.inactive_names()
    unknown = [n for n in names if n not in available and n not in inactive]
    if unknown:
        raise SettingsError(
            f"{key} (from {settings.source(key)}) names unknown {label} "
            f"{', '.join(map(repr, unknown))}",
            hint=f"available {label}: {', '.join(sorted(available)) or 'none'}",
        )
    return names


def resolve_image(image: str, settings: Settings, plugins: Plugins) -> ResolvedImage:
    parse_image(image)
    resolvers = plugins.image_resolvers()
    current = image
    steps: list[ResolutionStep] = []
    for name in ordered(settings, "images.resolvers", resolvers, plugins, "image resolvers"):
        resolver = resolvers.get(name)
        if resolver is None:  # disabled or failed plugin
            continue
        try:
            rewrite = resolver.resolve(current, settings)
        except ComposerError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ComposerError(f"image resolver {name!r} failed on {current!r}: "
                                f"{type(exc).__name__}: {exc}") from None
        if rewrite is None or rewrite.image == current:
            continue
        try:
            ImageRef.parse(rewrite.image)
        except InvalidReference as exc:
            raise ComposerError(f"image resolver {name!r} rewrote {current!r} into an invalid "
                                f"reference {rewrite.image!r}: {exc}") from None
        steps.append(ResolutionStep(name, current, rewrite.image, rewrite.detail))
        current = rewrite.image
    return ResolvedImage(input=image, ref=ImageRef.parse(current), steps=tuple(steps))
