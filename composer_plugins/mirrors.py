"""Built-in image resolver ``mirrors``: pull from a mirror instead of the registry an image names.

For air-gapped sites: ``opencti.daemon.docker.mirrors: {"docker.io": "mirror.company.com/dockerhub"}``
pulls ``docker.io/library/alpine:3.18`` as ``mirror.company.com/dockerhub/library/alpine:3.18``.
A rule's key is a registry or a registry with a path; it matches whole path segments only
(``reg.io/team`` covers ``reg.io/team/app`` but not ``reg.io/teamster/app``), the most specific
rule wins.
"""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.auth.registries import InvalidKey, parse_key
from composer_core.images.reference import ImageRef
from composer_core.settings import Problems, Settings, SettingsSpec, describe
from composer_core.types import ImageResolver, Rewrite

SETTING = "opencti.daemon.docker.mirrors"


def apply_mirrors(image: str, settings: Settings) -> Rewrite | None:
    rules = settings.get(SETTING) or {}
    if not rules:
        return None
    ref = ImageRef.parse(image)
    best: tuple[int, str, str] | None = None
    for key, target in rules.items():
        try:
            scope = parse_key(str(key))
        except InvalidKey:
            continue
        score = scope.matches(ref.registry, ref.path)
        if score is not None and (best is None or score > best[0]):
            best = (score, str(scope), str(target).strip().rstrip("/"))
    if best is None:
        return None
    _, matched, target = best
    prefix_len = len(matched.split("/")) - 1  # path segments the rule's key consumed
    rest = "/".join(ref.path.split("/")[prefix_len:])
    suffix = (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    if not ref.tag and not ref.digest:
        suffix = ":latest"
    # a rule may name a whole repository: then nothing of the path is left to append
    mirrored = "/".join(part for part in (target, rest) if part) + suffix
    return Rewrite(mirrored, f"mirror rule {matched!r} -> {target!r} ({SETTING})")


def _validate(settings: Settings, problems: Problems) -> None:
    rules = settings.get(SETTING)
    if not isinstance(rules, dict):
        problems.add(SETTING, f"must be a mapping of registry to mirror, not {describe(rules)}")
        return
    for source, target in rules.items():
        try:
            parse_key(str(source))
        except InvalidKey as exc:
            problems.add(f"{SETTING}.{source}", f"invalid rule: {exc}; a rule is a registry, "
                         "optionally with a path, such as docker.io or quay.io/team")
        if not isinstance(target, str) or not target.strip():
            problems.add(f"{SETTING}.{source}", "must be a mirror such as "
                         "mirror.company.com/dockerhub")


@hookimpl
def composer_settings() -> SettingsSpec:
    # {"docker.io": "mirror.company.com/dockerhub"}; replaced whole by a later layer
    return SettingsSpec(name="mirrors", owns=(SETTING,), validator=_validate,
                        defaults={"opencti": {"daemon": {"docker": {"mirrors": {}}}}})


@hookimpl
def composer_image_resolvers() -> ImageResolver:
    return ImageResolver(name="mirrors", resolve=apply_mirrors,
                         description="rewrite registries to their configured mirrors")
