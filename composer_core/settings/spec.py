"""What a plugin declares about the settings it reads (hook ``composer_settings``), and the
collector its validator reports problems to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from composer_core.records import Record
from composer_core.settings.model import SECTIONS, Settings


@dataclass(frozen=True)
class Problem:
    """One invalid setting: its key, the layer that set it, what is wrong, and who said so."""

    key: str
    origin: str
    message: str
    plugin: str | None = None

    def __str__(self) -> str:
        by = f", checked by plugin {self.plugin!r}" if self.plugin else ""
        return f"{self.key} (from {self.origin}{by}): {self.message}"


class Problems:
    """The problem collector a validator receives: ``add(key, message)`` for each problem found.

    The key is the dotted settings key the problem is about (``auth.helper_timeout``,
    ``opencti.daemon.docker.registries[2].url``); its origin (the file or environment variable that
    set it) and the plugin are filled in by the core. A message must never quote a value that may
    be secret: describe it with :func:`composer_core.settings.describe` instead.
    """

    def __init__(self, settings: Settings, plugin: str | None = None) -> None:
        self.settings = settings
        self.plugin = plugin
        self.items: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(Problem(key, self.settings.source(key), message, self.plugin))

    def for_plugin(self, plugin: str) -> Problems:
        """A collector that attributes its problems to ``plugin`` and adds them to this one."""
        child = Problems(self.settings, plugin)
        child.items = self.items
        return child


Validator = Callable[[Settings, Problems], None]


@dataclass(frozen=True)
class SettingsSpec(Record):
    """The settings a plugin reads: their defaults, how to validate them, and which keys it owns.

    * ``name``: the plugin's name (shown with every problem its validator reports);
    * ``defaults``: a nested mapping, like a settings file (``{"auth": {"helper_timeout": 10}}``),
      merged as a layer right after the embedded defaults, so that the plugin never needs a
      default of its own in ``settings.get``;
    * ``validator``: ``validator(settings, problems)`` calls ``problems.add(key, message)`` for
      each problem; it runs at every start, after the core's own checks;
    * ``owns``: the dotted keys this plugin reads, each covering everything under it. A key no
      spec and no core setting owns is reported as unknown ("did you mean ...?"); every key of
      ``defaults`` must lie under an owned key.
    """

    defaults: Mapping[str, Any] = field(default_factory=dict)
    validator: Validator | None = None
    owns: tuple[str, ...] = ()
    kind: ClassVar[str] = "settings spec"

    def __post_init__(self) -> None:
        super().__post_init__()  # the name rule every record follows
        object.__setattr__(self, "owns", tuple(self.owns))
        outside_sections = [key for key in self.owns if key.split(".", 1)[0] not in SECTIONS]
        if outside_sections:
            raise ValueError(f"settings spec {self.name!r} owns keys outside the sections "
                             f"{', '.join(SECTIONS)}: {', '.join(outside_sections)}")
        outside = [key for key in _leaf_keys(self.defaults) if not _covered(key, self.owns)]
        if outside:
            raise ValueError(f"settings spec {self.name!r} has defaults for keys it does not own: "
                             f"{', '.join(outside)}")

    def owns_key(self, dotted: str) -> bool:
        return _covered(dotted, self.owns)


def _covered(dotted: str, owned: tuple[str, ...]) -> bool:
    return any(dotted == key or dotted.startswith(key + ".") for key in owned)


def _leaf_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(_leaf_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys
