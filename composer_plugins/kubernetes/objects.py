"""The Kubernetes objects of a workload, as plain JSON-ready dicts (no client import, no cluster).

* :func:`deployment`: one Deployment per connector (replicas 1 / 0, our labels on the Deployment,
  its selector and pod template, the config hash as an annotation, the env, the pull policy and
  resources, the user's ``base_deployment`` deep-merged under ours);
* :func:`pull_secret`: one ``kubernetes.io/dockerconfigjson`` Secret per registry holding only the
  credential the chain resolved for it, named by :func:`secret_name`; its ``.dockerconfigjson``
  is byte-for-byte what ``kubectl create secret docker-registry --dry-run=client -o json`` writes
  (:func:`dockerconfigjson`: Go's ``encoding/json``, which escapes ``<``, ``>``, ``&``, U+2028
  and U+2029).

These are what the backend applies and what ``apply --dry-run -o yaml`` / ``--offline`` print.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.errors import ContainerError, RegistryError
from composer_core.types import AnyCredentials, Credentials
from composer_core.workload import Workload

#: our field manager for server-side apply
FIELD_MANAGER = "xtm-composer"
#: the one container of a connector's pod
CONTAINER = "connector"
#: marks a pull Secret as ours (with the manager label)
LABEL_PULL_SECRET = "xtm-composer/pull-secret"
#: the annotation on a pull Secret naming the registry it is for
ANNOTATION_REGISTRY = "xtm-composer/registry"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: the waiting reasons of a container whose image the kubelet cannot pull
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
#: Docker Hub's key in a dockerconfigjson, as ``docker login`` writes it (the kubelet knows it)
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
MASKED = "***"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
               "\u2029": "\\u2029"}


@dataclass(frozen=True)
class Options:
    """What the settings add to every Deployment (``opencti.daemon.kubernetes.*``)."""

    namespace: str
    image_pull_policy: str = "IfNotPresent"
    image_resources: Mapping[str, Any] | None = None
    base_deployment: Mapping[str, Any] = field(default_factory=dict)


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def check_name(name: str) -> None:
    """A Deployment name must be a DNS-1123 subdomain, and short enough for its pods' names."""
    if len(name) > 63 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ContainerError(
            f"{name!r} cannot name a Kubernetes Deployment: it must be at most 63 lowercase "
            "letters, digits, '-' or '.', starting and ending with a letter or a digit",
            hint="rename the connector (its name becomes the Deployment's name)")


def selector_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The Deployment's selector: manager and connector only (stable: a selector is immutable,
    the config hash changes with every change)."""
    return {key: labels[key] for key in (LABEL_MANAGER, LABEL_CONNECTOR) if key in labels}


def registry_key(registry: str) -> str:
    return DOCKER_HUB_KEY if registry == "docker.io" else registry


def secret_name(manager: str, registry: str) -> str:
    """``xtm-pull-<registry slug>-<8 hex>``: deterministic from the manager and the registry (two
    managers sharing a namespace never share a Secret; ``a:5000`` and ``a-5000`` never collide)."""
    slug = re.sub(r"[^a-z0-9]+", "-", registry.lower()).strip("-")[:40].strip("-") or "registry"
    digest = hashlib.sha256(f"{manager}\0{registry}".encode()).hexdigest()[:8]
    return f"xtm-pull-{slug}-{digest}"


def go_json(value: Any) -> str:
    """``value`` as Go's ``json.Marshal`` writes it: compact, UTF-8, HTML-safe escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _GO_ESCAPES[m.group(0)], text)


def dockerconfigjson(server: str, username: str, password: str) -> bytes:
    """The bytes kubectl puts in ``.dockerconfigjson`` for this server, user and password."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return go_json({"auths": {server: {"username": username, "password": password,
                                       "auth": auth}}}).encode()


def pull_credentials(credentials: AnyCredentials) -> Credentials | None:
    """The credential a pull Secret carries, ``None`` when anonymous (no Secret at all)."""
    if not isinstance(credentials, Credentials):
        return None
    if credentials.username is None or credentials.password is None:
        raise RegistryError(
            f"the credential for {credentials.registry} from provider {credentials.source!r} is "
            "an identity token: the kubelet pulls only with a username and password",
            hint=f"give a username and password for {credentials.registry} in provider "
                 f"{credentials.source!r}")
    return credentials


def pull_secret(credentials: Credentials, manager: str, namespace: str) -> dict[str, Any]:
    """The pull Secret of ``credentials.registry`` (only that credential), labelled as ours."""
    assert credentials.username is not None and credentials.password is not None
    data = dockerconfigjson(registry_key(credentials.registry), credentials.username,
                            credentials.password)
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name(manager, credentials.registry), "namespace": namespace,
                     "labels": {LABEL_MANAGER: manager, LABEL_PULL_SECRET: "true"},
                     "annotations": {ANNOTATION_REGISTRY: credentials.registry}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(data).decode("ascii")},
    }


def mask_secret(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Secret whose data values are masked (for ``--dry-run -o yaml``)."""
    masked = copy.deepcopy(dict(obj))
    if masked.get("kind") == "Secret":
        masked["data"] = {key: MASKED for key in masked.get("data") or {}}
    return masked


def deep_merge(base: Any, ours: Any) -> Any:
    """``ours`` over ``base``: mappings merge key by key; lists of mappings with a ``name``
    (containers, env, volumes) merge item by name, ours first; any other value is ours."""
    if isinstance(base, Mapping) and isinstance(ours, Mapping):
        merged = {key: copy.deepcopy(value) for key, value in base.items()}
        for key, value in ours.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (isinstance(base, list) and isinstance(ours, list) and ours
            and all(isinstance(i, Mapping) and "name" in i for i in [*base, *ours])):
        by_name = {item["name"]: item for item in base}
        merged_list = [deep_merge(by_name[i["name"]], i) if i["name"] in by_name
                       else copy.deepcopy(i) for i in ours]
        ours_names = {i["name"] for i in ours}
        return merged_list + [copy.deepcopy(i) for i in base if i["name"] not in ours_names]
    return copy.deepcopy(ours)


def deployment(workload: Workload, options: Options, secret: str | None) -> dict[str, Any]:
    """The Deployment of ``workload``; ``secret``: the pull Secret its pods use (or none)."""
    check_name(workload.name)
    labels = dict(workload.labels)
    annotations = {LABEL_HASH: workload.config_hash}
    container: dict[str, Any] = {
        "name": CONTAINER, "image": workload.image.ref.normalized(),
        "imagePullPolicy": options.image_pull_policy,
        "env": [{"name": key, "value": value} for key, value in sorted(workload.env.items())],
    }
    if workload.command:
        # a workload's command replaces the image's CMD (as on Docker), not its ENTRYPOINT
        container["args"] = list(workload.command)
    if options.image_resources:
        container["resources"] = copy.deepcopy(dict(options.image_resources))
    pod_spec: dict[str, Any] = {"containers": [container]}
    if secret is not None:
        pod_spec["imagePullSecrets"] = [{"name": secret}]
    ours = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": workload.name, "namespace": options.namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {
            "replicas": 1 if workload.state == "started" else 0,
            "selector": {"matchLabels": selector_labels(labels)},
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                         "spec": pod_spec},
        },
    }
    merged: dict[str, Any] = deep_merge(dict(options.base_deployment), ours)
    return merged
