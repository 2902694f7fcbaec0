"""Built-in runtime backend ``kubernetes``: one Deployment per connector, pull Secrets from the
credential chain (docs/kubernetes.md).

Cluster: ``opencti.daemon.kubernetes.kubeconfig`` when set, else ``KUBECONFIG``, else
``~/.kube/config`` when it exists, else the in-cluster service account; ``context`` picks a
kubeconfig context; ``namespace`` defaults to the context's (or, in-cluster, the pod's own). The
official ``kubernetes`` client is imported only when a command connects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from composer_core import hookimpl
from composer_core.settings import Problems, Settings, SettingsSpec, check_text
from composer_core.settings.validate import check_number
from composer_core.types import RuntimeBackend

if TYPE_CHECKING:
    from composer_plugins.kubernetes.backend import KubernetesBackend
    from composer_plugins.kubernetes.objects import Options

PREFIX = "opencti.daemon.kubernetes"
KUBECONFIG = f"{PREFIX}.kubeconfig"
CONTEXT = f"{PREFIX}.context"
NAMESPACE = f"{PREFIX}.namespace"
PULL_POLICY = f"{PREFIX}.image_pull_policy"
RESOURCES = f"{PREFIX}.image_resources"
BASE = f"{PREFIX}.base_deployment"
BASE_JSON = f"{PREFIX}.base_deployment_json"
ROLLOUT_TIMEOUT = f"{PREFIX}.rollout_timeout"
REQUEST_TIMEOUT = f"{PREFIX}.request_timeout"
DEFAULT_NAMESPACE = "default"


def base_deployment(settings: Settings) -> dict[str, Any]:
    """``base_deployment`` (a mapping, or YAML text as upstream takes it), else
    ``base_deployment_json``; ``{}`` when neither is set. Raises ValueError when invalid."""
    raw = settings.get(BASE)
    if isinstance(raw, str) and raw.strip():
        import yaml

        raw = yaml.safe_load(raw)
    if raw is None or raw == "":
        text = settings.get(BASE_JSON)
        raw = json.loads(text) if isinstance(text, str) and text.strip() else {}
    if not isinstance(raw, Mapping):
        raise ValueError("must be a mapping (a Deployment's fields)")
    return dict(raw)


def options(settings: Settings, namespace: str) -> Options:
    from composer_plugins.kubernetes.objects import Options

    resources = settings.get(RESOURCES)
    return Options(namespace=namespace, image_pull_policy=str(settings.get(PULL_POLICY)),
                   image_resources=dict(resources) if isinstance(resources, Mapping) else None,
                   base_deployment=base_deployment(settings))


def offline_namespace(settings: Settings) -> str:
    """The namespace objects are rendered for without a cluster (``apply --offline``)."""
    return str(settings.get(NAMESPACE) or DEFAULT_NAMESPACE)


class Connect:
    """``connect(settings)``: the backend on the configured cluster. ``connect.offline(settings)``:
    the same backend without any cluster, only to render its objects (``apply --offline``): the
    namespace is the setting's, else ``default``; every API call would raise."""

    def __call__(self, settings: Settings) -> KubernetesBackend:
        from composer_plugins.kubernetes.api import Api
        from composer_plugins.kubernetes.backend import KubernetesBackend

        api = Api.connect(kubeconfig=settings.get(KUBECONFIG), context=settings.get(CONTEXT),
                          namespace=settings.get(NAMESPACE),
                          timeout=float(settings.get(REQUEST_TIMEOUT)))
        return KubernetesBackend(api, options(settings, api.namespace),
                                 rollout_timeout=float(settings.get(ROLLOUT_TIMEOUT)))

    def offline(self, settings: Settings) -> KubernetesBackend:
        from composer_plugins.kubernetes.api import OfflineApi
        from composer_plugins.kubernetes.backend import KubernetesBackend

        namespace = offline_namespace(settings)
        return KubernetesBackend(OfflineApi(namespace), options(settings, namespace))


connect = Connect()


def _validate(settings: Settings, problems: Problems) -> None:
    check_text(settings, problems, KUBECONFIG, what="a kubeconfig file path", optional=True)
    check_text(settings, problems, CONTEXT, what="a kubeconfig context name", optional=True)
    namespace = check_text(settings, problems, NAMESPACE, what="a namespace name", optional=True)
    if namespace:
        from composer_plugins.kubernetes.objects import is_dns_label

        if not is_dns_label(namespace):
            problems.add(NAMESPACE, "must be a namespace name (at most 63 lowercase letters, "
                                    "digits or '-')")
    from composer_plugins.kubernetes.objects import PULL_POLICIES

    if settings.get(PULL_POLICY) not in PULL_POLICIES:
        problems.add(PULL_POLICY, f"must be one of {', '.join(PULL_POLICIES)}")
    if settings.get(RESOURCES) is not None and not isinstance(settings.get(RESOURCES), Mapping):
        problems.add(RESOURCES, "must be a mapping such as {limits: {memory: 512Mi}}")
    try:
        base_deployment(settings)
    except (ValueError, TypeError) as exc:  # yaml / json errors are ValueErrors
        key = BASE if settings.get(BASE) not in (None, "") else BASE_JSON
        problems.add(key, f"is not a valid base Deployment: {type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError is not a ValueError
        problems.add(BASE, f"is not valid YAML: {type(exc).__name__}")
    check_number(settings, problems, ROLLOUT_TIMEOUT, what="a number of seconds", minimum=0,
                 maximum=3600)
    check_number(settings, problems, REQUEST_TIMEOUT, what="a number of seconds", minimum=0,
                 maximum=600, above_minimum=True)


@hookimpl
def composer_settings() -> SettingsSpec:
    # kubeconfig None: KUBECONFIG, ~/.kube/config, else in-cluster; namespace None: the context's
    return SettingsSpec(name="kubernetes", owns=(PREFIX,), validator=_validate, defaults={
        "opencti": {"daemon": {"kubernetes": {
            "kubeconfig": None, "context": None, "namespace": None,
            "image_pull_policy": "IfNotPresent", "image_resources": None,
            "base_deployment": None, "base_deployment_json": None,
            "rollout_timeout": 60, "request_timeout": 30}}}})


@hookimpl
def composer_runtime_backends() -> RuntimeBackend:
    return RuntimeBackend(name="kubernetes", connect=connect,
                          description="Kubernetes (kubeconfig or in-cluster; Deployments, "
                                      "pull Secrets from the credential chain)")
