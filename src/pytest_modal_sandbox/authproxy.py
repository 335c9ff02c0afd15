"""Connect tokens where Modal's proxy is not: a bearer-token gate in front of a sandbox port.

Modal's ``Sandbox.create_connect_token()`` gives a URL and a token; requests to the URL with
``Authorization: Bearer <token>`` reach the sandbox's server on port 8080, others get 401.
The local backend and the emulator do the same with :class:`AuthProxy`: one HTTP listener on
127.0.0.1 per process, each token mapped to an upstream address (a tunnel into its sandbox).

A connection is admitted by its first request: without a known token it is answered
``401 Unauthorized`` and closed; with one, that request (its ``Authorization`` header taken
out: the server never sees the token) and everything after it are forwarded both ways as
bytes, so keep-alive, streaming and WebSocket upgrades work.  Tokens end with their sandbox
(:meth:`AuthProxy.revoke`).  Stdlib only, threads only: it serves tests, not traffic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import threading
from collections.abc import Callable

__all__ = ["AuthProxy", "ConnectToken", "proxy"]

MAX_HEAD = 65536
_DENIED = b"missing or invalid connect token (send Authorization: Bearer <token>)\n"


@dataclasses.dataclass(frozen=True)
class ConnectToken:
    """Where to send requests (``url``) and what proves the right to (``token``)."""

    url: str
    token: str

    def headers(self) -> dict[str, str]:
        """The request header that carries the token."""
        return {"Authorization": f"Bearer {self.token}"}

    def __repr__(self) -> str:  # the token is a credential: not in logs or reports
        return f"ConnectToken(url={self.url!r}, token=<hidden>)"


Upstream = Callable[[], tuple[str, int]]


class AuthProxy:
    """One listener; tokens map to upstream addresses (resolved per connection)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._tokens: dict[str, tuple[str, Upstream]] = {}  # token -> (owner, upstream)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._listen()}"

    def issue(self, owner: str, upstream: Upstream) -> ConnectToken:
        """A new token for ``upstream`` (a callable giving ``(host, port)``), owned by
        ``owner`` (a sandbox id, for :meth:`revoke`)."""
        url = self.url
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (owner, upstream)
        return ConnectToken(url, token)

    def revoke(self, owner: str) -> None:
        """End every token of ``owner``."""
        with self._lock:
            for token in [t for t, (o, _) in self._tokens.items() if o == owner]:
                del self._tokens[token]

    def _listen(self) -> int:
        with self._lock:
            if self._sock is None:
                sock = socket.create_server((self.host, 0))
                self._sock = sock
                self.port = sock.getsockname()[1]
                threading.Thread(target=self._accept, name="pms-authproxy", daemon=True).start()
            return self.port

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(conn)
            head, rest = _read_head(conn)
            if head is None:
                return
            lines = head.split(b"\r\n")
            kept, token = [lines[0]], ""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"authorization":
                    scheme, _, credential = value.strip().partition(b" ")
                    if scheme.lower() == b"bearer":
                        token = credential.strip().decode("latin-1")
                    continue
                kept.append(line)
            with self._lock:
                entry = self._tokens.get(token) if token else None
            if entry is None:
                conn.sendall(_response(401, "Unauthorized", _DENIED, "WWW-Authenticate: Bearer"))
                return
            try:
                upstream = socket.create_connection(entry[1](), timeout=10)
            except (OSError, Exception) as exc:
                conn.sendall(
                    _response(502, "Bad Gateway", f"sandbox unreachable: {exc}\n".encode())
                )
                return
            stack.enter_context(upstream)
            upstream.settimeout(None)
            upstream.sendall(b"\r\n".join(kept) + b"\r\n\r\n" + rest)
            back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            back.start()
            _pump(conn, upstream)
            back.join()


def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    conn.settimeout(30)
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(4096)
        except OSError:
            return None, b""
        if not chunk or len(data) > MAX_HEAD:
            return None, b""
        data += chunk
    conn.settimeout(None)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _response(code: int, reason: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    if extra:
        head += extra + "\r\n"
    return head.encode() + b"\r\n" + body


_proxy: AuthProxy | None = None
_proxy_lock = threading.Lock()


def proxy() -> AuthProxy:
    """This process's proxy (started on first use)."""
    global _proxy
    with _proxy_lock:
        if _proxy is None:
            _proxy = AuthProxy()
        return _proxy
