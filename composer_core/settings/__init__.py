"""Settings: layered, validated, every value knowing where it came from.

* :mod:`~composer_core.settings.loader`: reads the layers (files, the environment given, flags)
  and merges them over the embedded defaults and the plugins' defaults;
* :mod:`~composer_core.settings.model`: :class:`Settings`, the merged value, and masking;
* :mod:`~composer_core.settings.spec`: :class:`SettingsSpec`, what a plugin declares through the
  ``composer_settings`` hook, and the :class:`Problems` collector validators report to;
* :mod:`~composer_core.settings.validate`: the core's checks and the run of the plugins' validators;
* :mod:`~composer_core.settings.registry`: the private-registry block as one typed value.
"""

from __future__ import annotations

from composer_core.settings.loader import (
    SECTIONS,
    STRING_KEYS,
    SettingsSource,
    config_files_from_env,
    embedded_defaults,
    load_settings,
    read_layers,
    warn_unknown,
)
from composer_core.settings.model import Settings, UnknownKey, describe, looks_secret, mask
from composer_core.settings.spec import Problem, Problems, SettingsSpec
from composer_core.settings.validate import (
    check_bool,
    check_number,
    check_text,
    name_list,
    problems_of,
    validate_settings,
)

__all__ = [
    "SECTIONS", "STRING_KEYS", "Problem", "Problems", "Settings", "SettingsSource", "SettingsSpec",
    "UnknownKey", "check_bool", "check_number", "check_text", "config_files_from_env", "describe",
    "embedded_defaults", "load_settings", "looks_secret", "mask", "name_list", "problems_of",
    "read_layers", "validate_settings", "warn_unknown",
]
