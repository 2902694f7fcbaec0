"""What marks a container as ours: the labels every managed container carries, and the checks that
keep xtm-composer away from containers it does not manage."""

from __future__ import annotations

from collections.abc import Mapping

from composer_core.errors import ContainerError, ContainerNotFound
from composer_core.settings import Settings
from composer_core.types import ContainerInfo, Runtime

#: The labels every container we create carries (the first two as XTM Composer sets them).
LABEL_MANAGER = "opencti-manager"
LABEL_CONNECTOR = "opencti-connector-id"
LABEL_HASH = "opencti-config-hash"
#: Unique to one create call: what lets a failed create remove the engine's half-made container
#: and nothing else (another process may have created a container under the same name).
LABEL_CREATION = "xtm-composer-creation"


def manager_id(settings: Settings) -> str:
    return str(settings.get("manager.id"))


def is_managed(info: ContainerInfo, manager: str) -> bool:
    return info.labels.get(LABEL_MANAGER) == manager


def managed_container(runtime: Runtime, name: str, manager: str) -> ContainerInfo:
    """The container ``name`` if this manager manages it; :class:`ContainerNotFound` otherwise."""
    info = runtime.inspect(name)
    if info is None:
        raise ContainerNotFound(f"no container named {name!r} on {runtime.name}",
                                hint="`xtm-composer ps` lists the containers of this manager")
    if not is_managed(info, manager):
        raise not_managed(name, runtime.name, info.labels, manager)
    return info


def not_managed(name: str, where: str, labels: Mapping[str, str], manager: str) -> ContainerNotFound:
    """The refusal of a single-name command to act on a container of someone else."""
    owner = labels.get(LABEL_MANAGER)
    whose = f"manager {owner!r}" if owner else "no xtm-composer manager"
    return ContainerNotFound(
        f"container {name!r} on {where} is not managed by this manager "
        f"({LABEL_MANAGER}={manager}); it belongs to {whose}, so it is left alone",
        hint="xtm-composer only touches containers labelled with its manager.id")


def name_taken(name: str, where: str, manager: str) -> ContainerError:
    """The refusal of a deploy whose name is taken by a container of someone else."""
    return ContainerError(
        f"a container named {name!r} exists on {where} and is not managed by "
        f"this manager ({LABEL_MANAGER}={manager}): it is left alone",
        hint="choose another name, or remove that container yourself")
