"""HTTPS through the shared client, against a real TLS server on 127.0.0.1 with a
certificate made for the test: verification is on by default, a TLS context is built
only once an HTTPS origin is asked for, and the deadline bounds the handshake too."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.errors import ProviderError
from reconciler.httpclient import HttpClient, Retry
from reconciler.httpclient.transport import DeadlineTransport


def _certificate(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is needed to make the test certificate")
        pytest.skip("openssl is not installed")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key),
            "-out", str(cert), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield str(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(https URL, the certificate to trust)."""
    cert, key = _certificate(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    for port in _serve(server):
        yield f"https://127.0.0.1:{port}", cert


@pytest.fixture
def plain() -> Iterator[str]:
    for port in _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Handler)):
        yield f"http://127.0.0.1:{port}"


def test_https_is_verified_by_default(tls: tuple[str, Path]) -> None:
    url, _ = tls
    client = HttpClient(label="api", error=ProviderError, retry=Retry(retries=0))
    with client as c, pytest.raises(ProviderError) as e:
        c.request("GET", f"{url}/x")
    assert e.value.message == (
        f"api (GET {url}/x): TLS certificate not trusted (self-signed certificate)"
    )


def test_an_untrusted_certificate_is_not_retried(tls: tuple[str, Path]) -> None:
    """Waiting does not make a certificate trusted: one handshake, no backoff, for any
    method (as go-retryablehttp does not retry a certificate verification failure)."""
    url, _ = tls
    waits: list[float] = []
    client = HttpClient(
        label="api", error=ProviderError, retry=Retry(retries=4), sleep=waits.append
    )
    with client as c:
        for method in ("GET", "POST"):
            with pytest.raises(ProviderError) as e:
                c.request(method, f"{url}/x", json={})
            assert e.value.message == (
                f"api ({method} {url}/x): TLS certificate not trusted (self-signed certificate)"
            )
    assert waits == []


def test_https_with_a_trusted_certificate_and_plain_http_share_a_transport(
    tls: tuple[str, Path], plain: str
) -> None:
    """The TLS context is made when the first HTTPS origin is asked for, not before:
    a client that only speaks plain HTTP never loads the CA bundle."""
    url, cert = tls
    transport = DeadlineTransport(verify=ssl.create_default_context(cafile=cert))
    with httpx.Client(transport=transport) as c:
        assert c.get(f"{plain}/a").json() == {"path": "/a"}
        assert transport._ssl is None
        assert c.get(f"{url}/b").json() == {"path": "/b"}
        assert transport._ssl is not None
        assert c.get(f"{plain}/c").json() == {"path": "/c"}


def test_the_deadline_bounds_a_tls_handshake_that_never_answers() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
        url = f"https://127.0.0.1:{srv.getsockname()[1]}/x"
        client = HttpClient(label="api", error=ProviderError, deadline=1.0, retry=Retry(retries=0))
        with client as c, pytest.raises(ProviderError, match=r"within 1s"):
            c.request("GET", url, idempotent=False)
        for s in held:
            s.close()
