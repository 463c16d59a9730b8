"""Bounded input on `batchd serve`'s connections: a client that trickles its request head or
body is cut off while others are served, the connection cap holds, oversized URLs, heads and
bodies are refused, and HTTPS with --tls-cert/--tls-key works for boto3."""

from __future__ import annotations

import datetime
import socket
import ssl
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from conftest import REGION

LIMITS = {"server": {"header_timeout_seconds": 1.5, "body_timeout_seconds": 1.5, "max_connections": 3}}


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `s` within `seconds`, and what it sent before."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def list_jobs(server) -> int:
    with urllib.request.urlopen(f"{server.url}/model-invocation-jobs", timeout=20) as r:
        return r.status


def test_a_trickling_head_or_body_is_cut_off_and_others_are_served(start_server):
    server = start_server("local", LIMITS)
    head = connect(server)
    head.sendall(b"GET /model-invocation-jobs HTTP/1.1\r\nHost: x\r\n")  # never ends
    body = connect(server)
    body.sendall(b"POST /model-invocation-job HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"jobName\"")
    assert list_jobs(server) == 200, "served while two clients dawdle"
    closed, _ = closed_within(head, 6)
    assert closed, "a request head that never ends is cut off"
    closed, answer = closed_within(body, 6)
    assert closed or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    if answer:
        assert answer.split(b" ", 2)[1] in (b"400", b"408", b"413"), answer[:200]
    assert list_jobs(server) == 200


def test_the_connection_cap_queues_clients_until_one_closes(start_server):
    server = start_server("local", LIMITS)
    idle = [connect(server) for _ in range(3)]  # the cap; they send nothing
    time.sleep(0.3)
    started = time.monotonic()
    assert list_jobs(server) == 200
    waited = time.monotonic() - started
    # Served only once the header timeout closed an idle connection.
    assert waited >= 0.8, f"served after {waited:.2f}s: the cap did not hold"
    for s in idle:
        assert closed_within(s, 5)[0]


def test_oversized_url_head_and_body_are_refused(start_server):
    server = start_server("local", LIMITS)
    try:
        urllib.request.urlopen(f"{server.url}/model-invocation-jobs?nameContains={'x' * 9000}", timeout=10)
        raise AssertionError("a 9 kB URL was taken")
    except urllib.error.HTTPError as e:
        assert e.code == 414
    request = urllib.request.Request(f"{server.url}/model-invocation-jobs", headers={f"x-pad-{i}": "y" * 1000 for i in range(80)})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("an 80 kB head was taken")
    except urllib.error.HTTPError as e:
        assert e.code == 431
    big = urllib.request.Request(f"{server.url}/model-invocation-job", data=b"{" + b" " * (11 * 1024 * 1024) + b"}", method="POST", headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(big, timeout=30)
        raise AssertionError("an 11 MiB body was taken")
    except urllib.error.HTTPError as e:
        assert e.code == 413
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
        pass  # refused before the body was all sent
    assert list_jobs(server) == 200


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_a_certificate_serves_boto3(start_server, tmp_path):
    cert, key = self_signed(tmp_path)
    server = start_server("local", LIMITS, tls=(cert, key))
    assert server.url.startswith("https://127.0.0.1:")
    bedrock = boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        verify=str(cert),
        config=Config(retries={"max_attempts": 0}),
    )
    assert bedrock.list_model_invocation_jobs()["invocationJobSummaries"] == []
    # Plain HTTP to the TLS port gets nowhere; a client that never finishes the handshake is cut off.
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    plain = socket.create_connection((host, int(port)), timeout=10)
    plain.sendall(b"GET /model-invocation-jobs HTTP/1.1\r\nHost: x\r\n\r\n")
    closed, answer = closed_within(plain, 6)
    assert closed and not answer.startswith(b"HTTP/1.1 200"), answer[:100]
    silent = socket.create_connection((host, int(port)), timeout=10)
    assert closed_within(silent, 6)[0], "a silent TLS client is cut off after the handshake timeout"
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"{server.url}/v1/models", context=context, timeout=10) as r:
        assert r.status == 200
