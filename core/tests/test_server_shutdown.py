"""SIGTERM to a real ``ccvault serve`` process: the request in flight completes (and is
written), new connections are refused, the process exits 0."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from uuid import uuid4

import httpx

from ccvault.crypto import generate_key_entry
from ccvault.server.testing import embedded_config, running_server


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_finishes_the_request_in_flight(tmp_path: Path) -> None:
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    with running_server(embedded_config(tmp_path), tmp_path, env=env) as server:
        tenant, agent = uuid4(), uuid4()
        token = server.mint(tenant)
        body = json.dumps(
            {"tenant_id": str(tenant), "agent_id": str(agent), "name": "email"}
        ).encode()
        host, port = server.base_url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        try:
            head = (
                "PUT /v1/definitions HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Expect: 100-continue\r\n"
                "\r\n"
            ).encode()
            sock.sendall(head)
            # "100 Continue" is sent when the application asks for the body: the request is
            # now in flight inside the app
            assert b"100 Continue" in _read_until(sock, b"\r\n\r\n")
            sock.sendall(body[:10])

            server.process.send_signal(signal.SIGTERM)
            # bounded wait until the server stops accepting new connections
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{server.base_url}/healthz", timeout=1)
                except httpx.TransportError:
                    break
                time.sleep(0.05)  # polling interval of a bounded loop
            else:
                raise AssertionError("the server kept accepting connections after SIGTERM")
            assert server.process.poll() is None  # still finishing our request

            sock.sendall(body[10:])
            response = _read_until(sock, b"}")
        finally:
            sock.close()
        status_line = response.split(b"\r\n", 1)[0]
        assert b" 200 " in status_line, response
        assert b'"id"' in response
        assert server.process.wait(timeout=30) == 0
        assert "Application shutdown complete" in server.log()
