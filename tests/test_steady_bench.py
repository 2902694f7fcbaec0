"""bench/steady.py's own logic: the request parser of its counting relay, and the slope of the
memory samples (the benchmark's figures rest on them)."""

from __future__ import annotations

import pytest

from bench.steady import RequestParser, slope


def test_the_parser_counts_requests_across_pieces_and_skips_bodies() -> None:
    stream = (b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /v1.41/containers/create?name=a HTTP/1.1\r\nContent-Length: 29\r\n\r\n"
              b'{"Image": "GET / HTTP/1.1"}\r\n'
              b"POST /v4.0.0/libpod/images/pull HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
              b"GET /v1.41/events?since=1 HTTP/1.1\r\n\r\n")
    for size in (1, 7, len(stream)):
        parser = RequestParser()
        found = []
        for i in range(0, len(stream), size):
            found += parser.feed(stream[i:i + size])
        assert found == [("GET", "/v1.41/containers/json?all=1"),
                         ("POST", "/v1.41/containers/create?name=a"),
                         ("POST", "/v4.0.0/libpod/images/pull"),
                         ("GET", "/v1.41/events?since=1")], size


def test_a_head_without_an_end_is_refused_past_its_bound() -> None:
    parser = RequestParser()
    with pytest.raises(ValueError, match="larger than 1 MiB"):
        for _ in range(300):
            parser.feed(b"X" * 4096)


def test_slope_is_the_least_squares_one() -> None:
    assert slope([50.0] * 100) == 0
    assert slope([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert slope([5.0, 5.0, 5.0, 9.0]) == pytest.approx(1.2)
    assert slope([3.0]) == 0.0


def test_the_relay_counts_at_the_engine_and_tells_the_stream_apart(tmp_path) -> None:
    import socket
    import threading

    from bench.steady import CountingRelay

    engine_path = tmp_path / "engine.sock"
    engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    engine.bind(str(engine_path))
    engine.listen(8)
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = engine.accept()
            data = b""
            for _ in range(100):
                chunk = conn.recv(4096)
                data += chunk
                if not chunk or data.count(b"\r\n\r\n") >= 2:
                    break
            received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    relay = CountingRelay(tmp_path / "relay.sock", str(engine_path))
    try:
        for requests in ([b"GET /v1.41/_ping HTTP/1.1\r\n\r\n",
                          b"GET /v1.41/events?since=5&filters=x HTTP/1.1\r\n\r\n"],
                         [b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\n\r\n",
                          b"POST /v1.41/containers/abc/start HTTP/1.1\r\n\r\n"]):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(relay.path))
                client.sendall(b"".join(requests))
                assert client.recv(4096).endswith(b"OK")  # relayed both ways
        server.join(10)
        passes, stream = relay.sides()
        assert stream == {"GET /_ping": 1, "GET /events": 1}
        assert passes == {"GET /containers/json": 1, "POST /containers/{id}/start": 1}
        assert relay.snapshot() == passes + stream
        assert len(received) == 2
    finally:
        relay.close()
        engine.close()
