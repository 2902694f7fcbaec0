"""A STAND-IN for the OpenCTI platform, for tests only: this is not OpenCTI.

A real OpenCTI cannot run on these machines (it needs the platform itself, Elasticsearch or
OpenSearch, Redis, RabbitMQ and S3 storage; see docs/opencti.md). This fake is a real GraphQL
server, built with graphql-core from the SDL of the platform contract (``schema.graphql``, the one
in docs/opencti.md), served over HTTP on 127.0.0.1 by a thread, holding its state in memory and
driven by the tests. It enforces what the platform enforces, as the contract documents it:

* a bearer token on every field but ``about``, and the capabilities of the token's user
  (``connectorsForManagers`` needs SETTINGS_SETACCESSES, the manager's mutations CONNECTORAPI, the
  UI's ``updateConnectorRequestedStatus`` MODULES_MODMANAGE);
* one manager per platform (``Only one connector manager is supported per instance``), a manager
  name of at least 2 non-blank characters, and a public key that must be an RSA PKCS#1 PEM;
* input types, enums and non-null arguments as the schema says (graphql-core validates them), and
  ``DateTime`` as RFC 3339;
* password fields and ``OPENCTI_TOKEN`` encrypted with the registered public key, in the
  platform's layout (version byte, RSA block, AES-256-GCM), version 2 (OAEP) or 1 (PKCS#1 v1.5);
  the token ciphertext cached and stable, as the platform's Redis cache keeps it;
* the contract hash over the image, every ``KEY|VALUE`` (ciphertexts as they are) and the state
  timestamp; logs replaced on each push; health kept with its time.

The same encryption is implemented a second time in Node.js's ``crypto``
(``tests/opencti_encrypt.mjs``) and the tests cross-check the two. What it leaves out: Redis,
Elasticsearch, the catalog, Enterprise Edition, the 90 s auto-upgrade wait (a test can delay or fail
the listing instead), the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.graphql")
ALL_CAPABILITIES = frozenset({"CONNECTORAPI", "SETTINGS_SETACCESSES", "MODULES_MODMANAGE"})
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def encrypt_value(public_pem: str, value: str, version: int = 2) -> str:
    """The platform's ``encryptValue``: a fresh AES-256-GCM key and IV per value, the key material
    encrypted with RSA (version 1: PKCS#1 v1.5, version 2: OAEP SHA-256)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    public = serialization.load_pem_public_key(public_pem.encode())
    aes_key, iv = os.urandom(32), os.urandom(12)
    if version == 1:
        scheme: Any = padding.PKCS1v15()
    else:
        scheme = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                              label=None)
    block = public.encrypt(aes_key + iv, scheme)  # type: ignore[union-attr]
    sealed = AESGCM(aes_key).encrypt(iv, value.encode("utf-8"), None)  # ciphertext || tag
    return base64.b64encode(bytes([version]) + block + sealed).decode("ascii")


NODE_SCRIPT = Path(__file__).resolve().parent.parent / "opencti_encrypt.mjs"


def node_encrypt_value(public_pem: str, value: str, version: int = 2) -> str:
    """The same encryption done by Node.js's crypto, as the platform does it
    (``tests/opencti_encrypt.mjs``)."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed for the second implementation of the encryption")
    out = subprocess.run([node, str(NODE_SCRIPT)], input=json.dumps(
        {"public_key": public_pem, "values": [value], "version": version}),
        capture_output=True, text=True, timeout=60, check=True)
    return str(json.loads(out.stdout)[0])


def sanitize_name(name: str) -> str:
    """``managedConnectorAdd``'s rule."""
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", name).lower().strip("-")[:63].strip("-")
    return cleaned or "a-1"


@dataclass
class FakeConnector:
    id: str
    name: str
    image: str
    #: the contract's values in order: key -> (stored value, encrypted?)
    values: dict[str, tuple[str | None, bool]]
    token: str
    requested: str = "stopped"
    current: str | None = None
    state_timestamp: str | None = None
    token_ciphertext: str | None = None
    logs: list[str] | None = None
    log_pushes: int = 0
    health: dict[str, Any] | None = None
    health_pushes: int = 0
    status_reports: list[str] = field(default_factory=list)


class FakePlatform:
    """The stand-in. ``start()`` serves it on 127.0.0.1 (``url``); ``down()``/``up()`` make it
    unreachable and back on the same port."""

    def __init__(self, token: str, *, version: str = "6.8.1", encryption_version: int = 2,
                 capabilities: frozenset[str] = ALL_CAPABILITIES,
                 tls: tuple[str, str] | None = None, encrypt: Any = encrypt_value) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS instead of HTTP; ``encrypt``:
        :func:`encrypt_value` (Python) or :func:`node_encrypt_value` (Node.js's crypto)."""
        from graphql import build_schema

        self.users: dict[str, frozenset[str]] = {token: capabilities}
        self.tls = tls
        self.encrypt = encrypt
        self.version = version
        self.encryption_version = encryption_version
        self.schema = build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
        self._wire()
        self.lock = threading.RLock()
        self.manager: dict[str, Any] | None = None
        self.connectors: dict[str, FakeConnector] = {}
        self.calls: list[tuple[str | None, dict[str, Any], bool]] = []
        self.listing_error: str | None = None
        self.listing_delay = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- serving ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FakePlatform:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/graphql":
                    self._send(404, {"errors": [{"message": "not found"}]})
                    return
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"errors": [{"message": "invalid JSON body"}]})
                    return
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
                self._send(200, platform.execute(body, token))

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a read timeout) is not the fake's failure

        self._server = Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-opencti",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def up(self) -> None:
        self.start()

    stop = down

    # --- GraphQL ----------------------------------------------------------------------------

    def execute(self, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        from graphql import graphql_sync

        query = body.get("query")
        if not isinstance(query, str):
            return {"errors": [{"message": "Must provide query string."}]}
        variables = body.get("variables") or {}
        capabilities = self.users.get(token) if token is not None else None
        with self.lock:
            self.calls.append((body.get("operationName"), variables, capabilities is not None))
        if body.get("operationName") == "GetConnectors" and self.listing_delay:
            time.sleep(self.listing_delay)
        result = graphql_sync(self.schema, query, variable_values=variables,
                              operation_name=body.get("operationName"),
                              context_value={"capabilities": capabilities})
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [e.formatted for e in result.errors]
        return payload

    def _wire(self) -> None:
        from graphql import GraphQLError, GraphQLScalarType

        def parse_datetime(value: Any) -> str:
            if not isinstance(value, str) or not _RFC3339.fullmatch(value):
                raise GraphQLError(f"DateTime cannot represent value: {value!r}")
            return value

        scalar = self.schema.type_map["DateTime"]
        assert isinstance(scalar, GraphQLScalarType)
        scalar.parse_value = parse_datetime  # type: ignore[method-assign]
        if hasattr(scalar, "coerce_input_value"):  # graphql-core 3.3 reads this one
            scalar.coerce_input_value = parse_datetime
        query, mutation = self.schema.query_type, self.schema.mutation_type
        assert query is not None and mutation is not None
        query.fields["about"].resolve = lambda _o, _i: {"version": self.version}
        resolvers = {
            "connectorsForManagers": ("SETTINGS_SETACCESSES", self._listing),
            "registerConnectorsManager": ("CONNECTORAPI", self._register),
            "updateConnectorManagerStatus": ("CONNECTORAPI", self._ping),
            "updateConnectorCurrentStatus": ("CONNECTORAPI", self._current_status),
            "updateConnectorLogs": ("CONNECTORAPI", self._logs),
            "updateConnectorHealth": ("CONNECTORAPI", self._health),
            "updateConnectorRequestedStatus": ("MODULES_MODMANAGE", self._requested_status),
        }
        for name, (capability, resolver) in resolvers.items():
            fields = query.fields if name in query.fields else mutation.fields
            fields[name].resolve = self._guarded(capability, resolver)

    @staticmethod
    def _guarded(capability: str, resolver: Any) -> Any:
        from graphql import GraphQLError

        def resolve(_obj: Any, info: Any, **args: Any) -> Any:
            capabilities = info.context["capabilities"]
            if capabilities is None:
                raise GraphQLError("You must be logged in to do this.",
                                   extensions={"code": "AUTH_REQUIRED"})
            if capability not in capabilities:
                raise GraphQLError("You are not allowed to do this.",
                                   extensions={"code": "FORBIDDEN_ACCESS"})
            return resolver(**args)

        return resolve

    # --- resolvers --------------------------------------------------------------------------

    def _manager_view(self) -> dict[str, Any]:
        assert self.manager is not None
        last = self.manager["last_sync"]
        return {"id": self.manager["id"], "name": self.manager["name"],
                "public_key": self.manager["public_key"], "about_version": self.version,
                "last_sync_execution": datetime.fromtimestamp(last, UTC).isoformat(),
                "active": time.time() - last < 300}

    def _register(self, input: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from graphql import GraphQLError

        if input is None:
            raise GraphQLError("input is required")
        name = input["name"]
        if len(name) < 2 or not name.strip():
            raise GraphQLError("Validation error: name must be at least 2 characters, not blank",
                               extensions={"code": "CONSTRAINT_VALIDATION_ERROR"})
        pem = input["public_key"]
        if "BEGIN RSA PUBLIC KEY" not in pem:
            raise GraphQLError("public_key must be an RSA public key (PKCS#1 PEM)")
        try:
            if not isinstance(load_pem_public_key(pem.encode()), rsa.RSAPublicKey):
                raise ValueError
        except ValueError:
            raise GraphQLError("public_key is not a valid RSA public key") from None
        with self.lock:
            if self.manager is not None and self.manager["id"] != input["id"]:
                raise GraphQLError("Only one connector manager is supported per instance",
                                   extensions={"code": "FUNCTIONAL_ERROR"})
            self.manager = {"id": input["id"], "name": name, "public_key": pem,
                            "last_sync": time.time(),
                            "registrations": (self.manager or {}).get("registrations", 0) + 1}
            return self._manager_view()

    def _ping(self, input: dict[str, Any] | None = None) -> dict[str, Any] | None:  # noqa: A002
        with self.lock:
            if input is None or self.manager is None or self.manager["id"] != input["id"]:
                return None
            self.manager["last_sync"] = time.time()
            return self._manager_view()

    def _listing(self) -> list[dict[str, Any]]:
        from graphql import GraphQLError

        if self.listing_error:
            raise GraphQLError(self.listing_error)
        with self.lock:
            return [self._view(c) for c in self.connectors.values()]

    def _configuration(self, c: FakeConnector) -> list[dict[str, Any]]:
        assert self.manager is not None
        if c.token_ciphertext is None:  # the platform caches it: stable while it is polled
            c.token_ciphertext = self.encrypt(self.manager["public_key"], c.token,
                                              self.encryption_version)
        items = [{"key": k, "value": v, "encrypted": True if secret else None}
                 for k, (v, secret) in c.values.items()]
        items += [{"key": "CONNECTOR_ID", "value": c.id, "encrypted": None},
                  {"key": "CONNECTOR_NAME", "value": c.name, "encrypted": None},
                  {"key": "CONNECTOR_TYPE", "value": "EXTERNAL_IMPORT", "encrypted": None},
                  {"key": "OPENCTI_TOKEN", "value": c.token_ciphertext, "encrypted": True}]
        return items

    def _view(self, c: FakeConnector) -> dict[str, Any]:
        configuration = self._configuration(c)
        digest = hashlib.sha256(json.dumps({
            "image": c.image, "subHash": [f"{i['key']}|{i['value']}" for i in configuration],
            "state": c.state_timestamp}).encode()).hexdigest()[:16]
        return {"id": c.id, "name": c.name, "manager_contract_image": c.image,
                "manager_current_status": c.current, "manager_requested_status": c.requested,
                "manager_contract_configuration": configuration, "manager_contract_hash": digest,
                "connector_state_timestamp": c.state_timestamp}

    def _connector(self, cid: str) -> FakeConnector:
        from graphql import GraphQLError

        found = self.connectors.get(cid)
        if found is None:
            raise GraphQLError(f"Connector {cid} not found", extensions={"code": "NOT_FOUND"})
        return found

    def _current_status(self, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        with self.lock:
            c = self._connector(input["id"])
            c.current = input["status"]
            c.status_reports.append(input["status"])
            return self._view(c)

    def _requested_status(self, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        with self.lock:
            c = self._connector(input["id"])
            c.requested = input["status"]
            return self._view(c)

    def _logs(self, input: dict[str, Any]) -> str:  # noqa: A002
        with self.lock:  # no existence check, as the platform
            c = self.connectors.get(input["id"])
            if c is not None:
                c.logs = list(input["logs"])
                c.log_pushes += 1
        return str(input["id"])

    def _health(self, input: dict[str, Any]) -> str:  # noqa: A002
        with self.lock:
            c = self.connectors.get(input["id"])
            if c is not None:
                c.health = {**input, "last_update": time.time()}
                c.health_pushes += 1
        return str(input["id"])

    # --- what the tests drive ---------------------------------------------------------------

    def add_connector(self, name: str, image: str, values: dict[str, str] | None = None,
                      passwords: dict[str, str] | None = None) -> str:
        """``managedConnectorAdd``: password fields are encrypted at once with the manager's key."""
        with self.lock:
            if self.manager is None:
                raise RuntimeError("There is no connector manager configured")
            cid = str(uuid.uuid4())
            stored: dict[str, tuple[str | None, bool]] = {k: (v, False) for k, v in (values or {}).items()}
            for key, secret in (passwords or {}).items():
                stored[key] = (self.encrypt(self.manager["public_key"], secret,
                                            self.encryption_version), True)
            self.connectors[cid] = FakeConnector(cid, sanitize_name(name), image, stored,
                                                 token=str(uuid.uuid4()))
            return cid

    def edit_connector(self, cid: str, values: dict[str, str] | None = None,
                       passwords: dict[str, str] | None = None) -> None:
        with self.lock:
            assert self.manager is not None
            c = self.connectors[cid]
            for key, value in (values or {}).items():
                c.values[key] = (value, False)
            for key, secret in (passwords or {}).items():
                c.values[key] = (self.encrypt(self.manager["public_key"], secret,
                                              self.encryption_version), True)

    def plant_raw(self, cid: str, key: str, stored: str) -> None:
        """Store a value marked encrypted as it is (for undecryptable-value tests)."""
        with self.lock:
            self.connectors[cid].values[key] = (stored, True)

    def remove_connector(self, cid: str) -> None:
        with self.lock:
            del self.connectors[cid]

    def get(self, cid: str) -> FakeConnector:
        with self.lock:
            return self.connectors[cid]

    def operations(self) -> list[str | None]:
        with self.lock:
            return [c[0] for c in self.calls]
