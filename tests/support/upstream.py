"""Real HTTPS servers on loopback for relay tests: their own CA, optional mTLS, hostile behaviours.

`Upstream` records every request it got (method, path, headers, body) and answers per `behaviour`:
echo (JSON of what it got), pan (a body and header carrying a PAN), separated (PANs written with
dots, underscores, slashes, and one followed by its CVV), slow (drips body bytes past any deadline),
drip_headers (drips its status line and headers a byte at a time, past any deadline), huge (more
bytes than a route allows), redirect (302 to an internal address), psp (a payment-service answer
with a card number and an email in fields).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PAN = "4111111111111111"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str


class CertificateAuthority:
    def __init__(self, name: str = "TokenVault test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, common: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                         else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_cn: str | None = None


@dataclass
class Upstream:
    ca: CertificateAuthority
    behaviour: str = "echo"
    require_client_cert: bool = False
    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def start(self) -> Upstream:
        server_cert = self.ca.issue("upstream", dns=("localhost",), ips=("127.0.0.1", "::1"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "c.pem"), Path(directory, "k.pem")
            cert.write_text(server_cert.cert_pem)
            key.write_text(server_cert.key_pem)
            context.load_cert_chain(cert, key)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.ca.pem)
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm and the
                # peer's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                peer = self.connection.getpeercert() if upstream.require_client_cert else None
                cn = None
                if peer:
                    cn = dict(x[0] for x in peer["subject"]).get("commonName")
                upstream.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                          body, cn))
                getattr(self, f"_{upstream.behaviour}")(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _echo(self, body: bytes) -> None:
                seen = upstream.seen[-1]
                self._send(200, json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers,
                                            "body": body.decode("utf-8", "replace"), "client": seen.client_cn})
                           .encode(), {"X-Request-Seen": "1", "Set-Cookie": "upstream=1"})

            def _pan(self, body: bytes) -> None:
                self._send(200, json.dumps({"echo": body.decode("utf-8", "replace"),
                                            "note": f"card 4111-1111-1111-1111 and {PAN}"}).encode(),
                           {"X-Card": PAN})

            def _separated(self, body: bytes) -> None:
                self._send(200, json.dumps({"dots": "4111.1111.1111.1111", "underscores": "5105_1051_0510_5100",
                                            "slashes": "4111/1111/1111/1111", "with_cvv": f"{PAN} 123",
                                            "glued_cvv": f"{PAN}123", "order": 1234567}).encode(),
                           {"X-Card": "5105.1051.0510.5100"})

            def _drip_headers(self, body: bytes) -> None:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + b"X-Slow: " + b"z" * 200 + b"\r\n"
                for byte in head:  # every byte arrives well within any per-read timeout
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.05)
                self.close_connection = True

            def _psp(self, body: bytes) -> None:
                self._send(201, json.dumps({"id": "ch_1", "status": "succeeded",
                                            "source": {"number": PAN, "last4": "1111"},
                                            "receipt_email": "jane@example.com"}).encode())

            def _slow(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)

            def _huge(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()  # no length: read until close
                try:
                    for _ in range(64):
                        self.wfile.write(b"y" * 65536)
                except OSError:
                    pass
                self.close_connection = True

            def _redirect(self, body: bytes) -> None:
                self._send(302, b"{}", {"Location": "https://169.254.169.254/latest/meta-data/"})

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, host: str | None = None) -> str:
        return f"https://{host or self.host}:{self.port}"


def main() -> None:
    """`python -m tests.support.upstream --port 8443 --ca-out var/demo-ca.pem`: an HTTPS echo server on
    127.0.0.1 with its own CA (written to --ca-out), standing in for a PSP or a merchant's backend."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--ca-out", type=Path, required=True)
    parser.add_argument("--behaviour", default="echo", choices=["echo", "pan", "psp"])
    args = parser.parse_args()
    ca = CertificateAuthority("TokenVault relay demo CA")
    args.ca_out.parent.mkdir(parents=True, exist_ok=True)
    args.ca_out.write_text(ca.pem)
    server = Upstream(ca, behaviour=args.behaviour, port=args.port).start()
    print(f"echo upstream on {server.url()} (CA in {args.ca_out}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
