"""
Serving a listening socket inherited from the parent process, as the worker
processes of C{[http] workers} do.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory


class _InheritedUNIXPort(unix.Port):
    """
    A L{unix.Port} on an inherited socket whose file belongs to the parent
    process.

    Twisted's own port sets the file's mode to 0666 when it starts, and when
    it stops it shuts the socket down and removes the file. Here the first
    would undo the C{mode} of the listen address, and the others would stop
    the parent and the other worker processes from serving the socket too.
    """

    # shutdown() acts on the socket, not on this process's descriptor.
    _shouldShutdown = False

    def startListening(self) -> None:
        path = self._bindPath
        if _in_filesystem(path):
            # Keep the mode that the parent's listen address gave the file.
            self.mode = stat.S_IMODE(os.stat(path).st_mode)
        super().startListening()

    def connectionLost(self, reason: Any) -> None:
        # Close the socket, but skip unix.Port's removal of the file.
        tcp.Port.connectionLost(self, reason)


def _in_filesystem(path: str | bytes) -> bool:
    # Linux's abstract namespace names start with a NUL byte and are no file.
    return bool(path) and path[:1] not in ("\0", b"\0")


def adopt_listening_socket(
    reactor: Any, descriptor: int, factory: IProtocolFactory
) -> IListeningPort:
    """
    Serve C{factory} on the listening TCP or UNIX socket open as file
    descriptor C{descriptor}, and close that descriptor: the returned port
    uses a duplicate of it.

    @raise OSError: when C{descriptor} is not open or not a socket.
    @raise twisted.internet.error.UnsupportedAddressFamily: for a socket
        that is neither TCP nor UNIX.
    """
    # With fileno, the socket module reads the family from the socket.
    probe = socket.socket(fileno=descriptor)
    family = probe.family
    probe.detach()
    port: IListeningPort
    if family == socket.AF_UNIX:
        # The same two steps as reactor.adoptStreamPort, with the port class
        # that leaves the socket file alone.
        port = _InheritedUNIXPort._fromListeningDescriptor(reactor, descriptor, factory)
        port.startListening()
    else:
        port = reactor.adoptStreamPort(descriptor, family, factory)
    # The processes share the socket's open file description, and with it
    # O_NONBLOCK. PyPy's socket.fromfd and socket(fileno=...) clear that
    # flag, which made every process block in accept() once another had
    # taken the connection. Set it again, after the last of them.
    os.set_blocking(descriptor, False)
    os.close(descriptor)
    return port
