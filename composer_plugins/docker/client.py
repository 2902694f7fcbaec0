"""The Docker SDK's low-level client, minus everything it reads from ``~/.docker/config.json``.

``docker.APIClient.__init__`` (docker-py 7.x) loads the Docker CLI's ``config.json`` (``auths``,
``credsStore``, ``proxies``, ``HttpHeaders``...) and fails on one malformed ``auth`` entry
(``binascii.Error: Incorrect padding``), before any request is made. The runtime never uses that
store: every pull passes its auth explicitly (``{}`` when anonymous), and the credential chain is
the only place credentials come from. So this client is ``APIClient.__init__`` restricted to the
transports the runtime supports (a unix socket; TCP, with or without TLS), with empty configs
and no file read. Everything after construction is the SDK's own code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import requests
from docker.constants import (
    DEFAULT_MAX_POOL_SIZE,
    DEFAULT_NUM_POOLS,
    DEFAULT_USER_AGENT,
    MINIMUM_DOCKER_API_VERSION,
)
from docker.errors import DockerException, InvalidVersion
from docker.tls import TLSConfig
from docker.transport import UnixHTTPAdapter
from docker.utils import utils
from docker.utils.proxy import ProxyConfig

#: Endpoint schemes the Docker runtime accepts (docker-py's ``parse_host`` spellings).
SUPPORTED_SCHEMES = ("unix", "http+unix", "tcp", "http", "https")


class ConfigFreeAPIClient(docker.APIClient):  # type: ignore[misc]
    """A :class:`docker.APIClient` that never reads the Docker CLI's config files."""

    def __init__(self, base_url: str, *, version: str = "auto", timeout: float = 60,
                 tls: TLSConfig | bool = False) -> None:
        requests.Session.__init__(self)
        self.timeout = timeout
        self.headers["User-Agent"] = DEFAULT_USER_AGENT
        # What the SDK would have read from config.json: nothing.
        self._general_configs: dict[str, Any] = {}
        self._proxy_configs = ProxyConfig.from_dict({})
        self._auth_configs = docker.auth.AuthConfig({})
        self.credstore_env = None

        url = utils.parse_host(base_url, False, tls=bool(tls))
        if url.startswith("http+unix://"):
            self._custom_adapter = UnixHTTPAdapter(url, timeout, pool_connections=DEFAULT_NUM_POOLS,
                                                   max_pool_size=DEFAULT_MAX_POOL_SIZE)
            self.mount("http+docker://", self._custom_adapter)
            self._unmount("http://", "https://")
            self.base_url = "http+docker://localhost"
        elif url.startswith(("http://", "https://")):
            if isinstance(tls, TLSConfig):
                tls.configure_client(self)
            elif tls:
                self._custom_adapter = requests.adapters.HTTPAdapter(
                    pool_connections=DEFAULT_NUM_POOLS)
                self.mount("https://", self._custom_adapter)
            self.base_url = url
        else:
            raise DockerException(f"unsupported Docker endpoint {base_url!r}")

        self._version = self._retrieve_server_version() if version == "auto" else version
        if not isinstance(self._version, str):
            raise DockerException(f"the daemon reported no API version: {self._version!r}")
        if utils.version_lt(self._version, MINIMUM_DOCKER_API_VERSION):
            raise InvalidVersion(f"Docker API {self._version} is older than the oldest supported "
                                 f"({MINIMUM_DOCKER_API_VERSION})")

    def _stream_helper(self, response: requests.Response, decode: bool = False) -> Iterator[Any]:
        """The SDK's stream reader, closing the response when the stream is closed or dropped."""
        try:
            yield from super()._stream_helper(response, decode)
        finally:
            response.close()
