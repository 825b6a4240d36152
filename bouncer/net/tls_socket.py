"""A pyOpenSSL connection driven cooperatively under gevent, offering the socket methods bouncer
uses on a client socket (recv, send, sendall, pending, settimeout, shutdown, close, fileno...).

Why not ``gevent.ssl``: stdlib ssl cannot ask a client for a certificate without letting OpenSSL
reject a bad one with a bare TLS alert ("unknown ca").  Here the handshake accepts any
certificate and the TLS policy judges it afterwards (:mod:`bouncer.net.certs`), so the client
gets a PostgreSQL FATAL that says what is wrong.  Only clients that asked for TLS get this
wrapper: the plain-TCP path is untouched.
"""
from __future__ import annotations

import socket
from typing import Any, Callable, List, Optional, Tuple, Union

from gevent import get_hub
from gevent.socket import cancel_wait_ex, wait, wait_read, wait_write
from OpenSSL import SSL, crypto

from bouncer.net.certs import openssl_reason, to_der

#: OpenSSL hands out at most one record (16 KiB) per read: a bigger buffer is wasted.
TLS_RECORD = 16384

_READ, _WRITE = 1, 2  # libev event masks


class TlsError(OSError):
    """The TLS layer failed (handshake or record); ``str()`` is OpenSSL's reason."""


class TlsSocket:
    """One server-side TLS connection over a gevent socket; create it with :meth:`accept`."""

    def __init__(self, sock: socket.socket, connection: SSL.Connection, context: Any) -> None:
        self._sock = sock
        self._conn = connection
        #: The context that accepted this connection: its CA judges the peer's certificate.
        self.context = context
        self._timeout: Optional[float] = None
        loop = get_hub().loop
        self._readable = loop.io(sock.fileno(), _READ)
        self._writable = loop.io(sock.fileno(), _WRITE)

    @classmethod
    def accept(cls, sock: socket.socket, ssl_context: SSL.Context, owner: Any) -> "TlsSocket":
        """Run the server half of the handshake on *sock* (the ``S`` answer was sent).

        :raises TlsError: the handshake failed (the reason is OpenSSL's).
        """
        connection = SSL.Connection(ssl_context, sock)
        connection.set_accept_state()
        tls = cls(sock, connection, owner)
        try:
            tls._drive(connection.do_handshake, reading=True)
        except SSL.SysCallError as exc:
            raise _os_error(exc) from None
        except SSL.Error as exc:
            raise TlsError(openssl_reason(exc)) from None
        return tls

    # -- I/O -------------------------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        """Up to *bufsize* decrypted bytes; ``b""`` at end of stream."""
        try:
            return self._drive(self._conn.recv, min(bufsize, TLS_RECORD), reading=True)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 0):  # EOF without close_notify
                return b""
            raise _os_error(exc) from None
        except SSL.Error as exc:
            raise TlsError(openssl_reason(exc)) from None

    def send(self, data: Union[bytes, memoryview]) -> int:
        """Write what OpenSSL takes at once (it may be less than *data*); the count written."""
        try:
            return self._drive(self._conn.send, data, reading=False)
        except SSL.SysCallError as exc:
            raise _os_error(exc) from None
        except SSL.Error as exc:
            raise TlsError(openssl_reason(exc)) from None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def pending(self) -> int:
        """Decrypted bytes already read from the socket: its readiness does not show them."""
        return self._conn.pending()

    def _drive(self, operation: Callable[..., Any], *args: Any, reading: bool) -> Any:
        """Call *operation* until OpenSSL stops asking for I/O, waiting cooperatively.

        The relay reads a client in one greenlet and writes it from another: the reader waits
        on this socket's read watcher, the writer on its write watcher.  The rare need for the
        opposite direction (a TLS 1.3 key update) gets a one-off watcher, because gevent
        refuses two greenlets waiting on one watcher.
        """
        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                self._wait(self._readable if reading else None, wait_read)
            except SSL.WantWriteError:
                self._wait(None if reading else self._writable, wait_write)

    def _wait(self, watcher: Any, one_off: Callable[..., None]) -> None:
        timeout_exc = socket.timeout("timed out")
        if watcher is not None:
            wait(watcher, self._timeout, timeout_exc)
        else:
            one_off(self._sock.fileno(), self._timeout, timeout_exc)

    # -- socket methods --------------------------------------------------------------------------

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def shutdown(self, how: int) -> None:
        """Shut the TCP connection down (wakes a greenlet blocked in :meth:`recv`)."""
        self._sock.shutdown(how)

    def close(self) -> None:
        """Close without waiting; a greenlet blocked on this socket gets ``cancel_wait_ex``."""
        try:
            self._conn.shutdown()  # close_notify, if OpenSSL can send it right now
        except SSL.Error:
            pass  # the peer is gone or a write is pending: closing is all that is left
        get_hub().cancel_waits_close_and_then((self._readable, self._writable), cancel_wait_ex,
                                              self._sock.close)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self._sock.getsockopt(*args)

    @property
    def family(self) -> int:
        return self._sock.family

    # -- what was negotiated (ssl.SSLSocket's names where it has them) --------------------------

    def version(self) -> Optional[str]:
        """``TLSv1.3`` etc."""
        return self._conn.get_protocol_version_name()

    def cipher(self) -> Optional[Tuple[str, str, int]]:
        """(name, protocol, secret bits), like ``ssl.SSLSocket.cipher()``."""
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return name, self._conn.get_cipher_version() or "", self._conn.get_cipher_bits() or 0

    def group(self) -> Optional[str]:
        """The key-exchange group (``x25519``...), where pyOpenSSL can tell (not 23.0)."""
        get_group_name = getattr(self._conn, "get_group_name", None)
        return get_group_name() if get_group_name is not None else None

    def getpeercert(self, binary_form: bool = False) -> Optional[bytes]:
        """The peer's certificate as DER, as ``ssl.SSLSocket.getpeercert(True)`` gives it."""
        if not binary_form:
            raise ValueError("only the DER form (binary_form=True) is available")
        certificate = self.peer_certificate()
        return to_der(certificate) if certificate is not None else None

    def peer_certificate(self) -> Optional[crypto.X509]:
        return self._conn.get_peer_certificate()

    def peer_intermediates(self) -> List[crypto.X509]:
        """The other certificates the peer sent (on the server side OpenSSL omits the leaf)."""
        return list(self._conn.get_peer_cert_chain() or ())


def _os_error(exc: SSL.SysCallError) -> OSError:
    if len(exc.args) == 2 and isinstance(exc.args[0], int) and exc.args[0] > 0:
        return OSError(exc.args[0], str(exc.args[1]))
    return ConnectionResetError(f"connection lost: {exc}")
