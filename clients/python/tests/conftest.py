"""Real processes for the tests: a redis-server of their own on a free port (never 6379), the
gateway binary built by `cargo build -p e2e --bin gateway-e2e`, WebSocket clients, and a TCP
proxy that cuts a connection mid-publish. Everything started here is stopped by its fixture."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import redis
from websockets.sync.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[3]
#: How long an awaited event may take before a test fails (CI machines are slow and shared).
DEADLINE = 15.0
#: The HS256 key gateways verify browser tokens with (simplejwt's SIGNING_KEY).
JWT_SECRET = "c4a91f7e2d08b3a65f1e9c7d2b84a06e3f5d1c9b7a2e8f40"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def program(name: str, install: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.is_file()), None
    )
    if path is None:
        pytest.fail(f"{name} not found: install it with `{install}` (tests/run.sh does)")
    return path


def cargo_binary(name: str) -> str:
    path = REPO / "target" / "debug" / name
    if not path.is_file():
        pytest.fail(
            f"{path} not built: run `cargo build -p e2e --bin {name}` (tests/python.sh does)"
        )
    return str(path)


def make_test_ca(directory: Path) -> Path:
    """A CA (ca.crt) and a server certificate it signed for 127.0.0.1 (tls.crt, tls.key),
    made with the openssl CLI in ``directory``."""
    openssl = program("openssl", "apt-get install -y openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    for args in (
        ["req", "-x509", "-days", "2", *ec, "-keyout", "ca.key", "-out", "ca.crt",
         "-subj", "/CN=python client test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-new", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "tls.crt"],
    ):  # fmt: skip
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)
    return directory / "ca.crt"


class RedisProcess:
    """A redis-server on a free loopback port; restartable on the same port. With ``tls``
    (a folder from :func:`make_test_ca`) it serves TLS only."""

    def __init__(self, tls: Optional[Path] = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="ng-redis-")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                     "--tls-cert-file", str(self.tls / "tls.crt"),
                     "--tls-key-file", str(self.tls / "tls.key"),
                     "--tls-ca-cert-file", str(self.tls / "ca.crt")]  # fmt: skip
        self.process = subprocess.Popen(
            [
                program("redis-server", "apt-get install -y redis-server"),
                *ports,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"redis-server on {self.port} never answered"
                time.sleep(0.02)

    def client(self) -> "redis.Redis[bytes]":
        ca = str(self.tls / "ca.crt") if self.tls else None
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=DEADLINE, ssl=bool(ca), ssl_ca_certs=ca
        )

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def history(self, user: int) -> List[Any]:
        return self.client().xrange(f"history:user_{user}")


class GatewayProcess:
    """The gateway binary, configured through GW__* variables as operators do, verifying
    HS256 tokens."""

    def __init__(self, redis_server: RedisProcess) -> None:
        self.redis = redis_server
        self.port = free_port()
        # The internal listener: /readyz (and the publish API, metrics) answer only there.
        self.internal_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="ng-gateway-", suffix=".log", delete=False)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "RUST_LOG": "info",
            "GW__SERVER__BIND": f"127.0.0.1:{self.port}",
            "GW__SERVER__INTERNAL_BIND": f"127.0.0.1:{self.internal_port}",
            "GW__SERVER__WORKERS": "1",
            "GW__REDIS__URL": redis_server.url,
            "GW__AUTH__MODE": "jwt",
            "GW__AUTH__HS256_SECRET": JWT_SECRET,
        }
        self.process = subprocess.Popen(
            [cargo_binary("gateway-e2e")], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + DEADLINE
        while not self._ready():
            assert self.process.poll() is None, f"gateway exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"gateway never ready:\n{self.output()}"
            time.sleep(0.025)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.internal_port}/readyz", timeout=1
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def socket(self, user: int) -> "Browser":
        url = f"ws://127.0.0.1:{self.port}/ws/notifications/{user}/?token={access_token(user)}"
        return Browser(connect(url, open_timeout=DEADLINE, legacy=True))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        os.unlink(self.log.name)


class Browser:
    """A WebSocket client standing in for a browser tab."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    def next_text(self) -> str:
        frame = self.connection.recv(timeout=DEADLINE)
        assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
        return frame

    def next_json(self) -> Dict[str, Any]:
        value = json.loads(self.next_text())
        assert isinstance(value, dict)
        return value

    def close(self) -> None:
        self.connection.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(user: int) -> str:
    """An HS256 access token shaped like djangorestframework-simplejwt's."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(
        json.dumps(
            {
                "token_type": "access",
                "exp": now + 300,
                "iat": now,
                "jti": os.urandom(16).hex(),
                "user_id": user,
            }
        ).encode()
    )
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    return f"{header}.{claims}.{_b64(signature.digest())}"


class CuttingProxy:
    """Forwards loopback TCP to Redis. Once armed, it forwards the next EVALSHA request and then
    drops that connection instead of passing Redis' reply on: the publish ran, its answer is
    lost, as when a network path breaks mid-request."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.lock = threading.Lock()
        self.armed = False
        self.dropped_reply: Optional[bytes] = None
        self.cut = threading.Event()
        self.sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        with self.lock:
            self.armed = True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            state = {"cutting": False}
            threading.Thread(
                target=self._requests, args=(client, server, state), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(server, client, state), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, state: Dict[str, bool]
    ) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
                    state["cutting"] = True
            try:
                server.sendall(data)
            except OSError:
                return

    def _replies(
        self, server: socket.socket, client: socket.socket, state: Dict[str, bool]
    ) -> None:
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                return
            if not data:
                client.close()
                return
            if state["cutting"]:
                self.dropped_reply = data
                client.shutdown(socket.SHUT_RDWR)
                client.close()
                server.close()
                self.cut.set()
                return
            try:
                client.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


class SilentServer:
    """Accepts TCP connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.held: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for s in self.held:
            s.close()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def stack() -> Iterator[GatewayProcess]:
    """One Redis and one gateway for a test module; tests use user ids of their own."""
    server = RedisProcess()
    gateway = GatewayProcess(server)
    yield gateway
    gateway.stop()
    server.kill()
