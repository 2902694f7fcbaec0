"""Bench smoke test: the test image pulls from every bench registry through both real engines.

Raw SDK calls on purpose: this checks the bench itself, independently of our runtime plugins.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def _registries(bench):
    creds = {"username": bench.username, "password": bench.password}
    return [
        ("private", bench.registry_private, creds),
        ("open", bench.registry_open, None),
        ("tls", bench.registry_tls, creds),
    ]


def test_docker_pulls_from_every_registry(bench) -> None:
    import docker

    client = docker.DockerClient(base_url=bench.docker_host, timeout=60)
    try:
        for name, registry, creds in _registries(bench):
            repo = f"{registry}/{bench.image.split(':')[0]}"
            tag = bench.image.split(":")[1]
            auth = dict(creds, serveraddress=registry) if creds else {}
            image = client.images.pull(repo, tag=tag, auth_config=auth)
            assert f"{repo}:{tag}" in image.tags, name
            client.images.remove(f"{repo}:{tag}", force=True)
    finally:
        client.close()


def test_podman_pulls_from_every_registry(bench) -> None:
    import podman

    with podman.PodmanClient(base_url=bench.podman_host, timeout=60) as client:
        for name, registry, creds in _registries(bench):
            repo = f"{registry}/{bench.image.split(':')[0]}"
            tag = bench.image.split(":")[1]
            kwargs = {"auth_config": creds} if creds else {}
            # bench registries are plain HTTP or signed by the bench's own CA
            image = client.images.pull(repo, tag=tag, tls_verify=False, **kwargs)
            assert image.id, name
            assert client.images.exists(f"{repo}:{tag}"), name
            client.images.remove(f"{repo}:{tag}", force=True)


def test_private_registries_refuse_anonymous_pulls(bench) -> None:
    import docker
    from docker.errors import APIError

    client = docker.DockerClient(base_url=bench.docker_host, timeout=60)
    try:
        repo = bench.image.split(":")[0]
        with pytest.raises(APIError, match="no basic auth credentials|authentication required"):
            client.images.pull(f"{bench.registry_private}/{repo}", tag="1.0", auth_config={})
        # Docker falls back to plain HTTP on loopback after the TLS attempt is refused, so its
        # final text for the TLS registry is a transport error, not the 401: only refusal is checked
        with pytest.raises(APIError):
            client.images.pull(f"{bench.registry_tls}/{repo}", tag="1.0", auth_config={})
    finally:
        client.close()
