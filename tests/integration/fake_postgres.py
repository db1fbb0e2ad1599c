"""An impostor PostgreSQL server on loopback: it refuses SSL ('N' to SSLRequest and GSSENCRequest), asks
for the password in clear and records what it gets, so a test sees whether a client would have handed
its password to whoever answers on the server's address."""

from __future__ import annotations

import socket
import struct
import threading

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
AUTH_CLEARTEXT_PASSWORD = 3


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    return data


class PlaintextPostgres:
    """Listens on a free loopback port. `held`: each connection waits for release() before any answer
    (a client stays connecting for as long as a test needs)."""

    def __init__(self, held: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.ssl_requests = 0
        self.startups = 0
        self.passwords: list[str] = []
        self.released = threading.Event()
        if not held:
            self.released.set()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, password: str, query: str = "") -> str:
        return f"postgresql://airflow:{password}@127.0.0.1:{self.port}/airflow" + (f"?{query}" if query else "")

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            self.released.wait(60)
            try:
                while True:  # SSLRequest / GSSENCRequest until the startup message
                    length, code = struct.unpack("!ii", _read(conn, 8))
                    _read(conn, length - 8)
                    if code not in (SSL_REQUEST, GSSENC_REQUEST):
                        break
                    self.ssl_requests += code == SSL_REQUEST
                    conn.sendall(b"N")
                self.startups += 1
                conn.sendall(b"R" + struct.pack("!ii", 8, AUTH_CLEARTEXT_PASSWORD))
                kind, (length,) = _read(conn, 1), struct.unpack("!i", _read(conn, 4))
                body = _read(conn, length - 4)
                if kind == b"p":
                    self.passwords.append(body.rstrip(b"\0").decode(errors="replace"))
                fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "airflow"\0\0'
                conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            except (OSError, struct.error):
                pass
