"""Real UDP peers for DRAC tests: a portmapper (RFC 1833 v2: SET, GETPORT) and a DRAC server
(program 900101 v1, DRACPROC_ADD) that registers with it as rpc.dracd does and records every
address it is given. Both decode the RPC messages themselves (RFC 5531), independently of
qpopper/server/drac.py. Used by tests/integration/test_drac.py and the scale-out tests.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from qpopper.server import drac

ADD_SUCCESS, ADD_PERM = 0, 1


class RpcServer:
    """A UDP ONC RPC server on 127.0.0.1: `handle(program, version, procedure, args)`
    returns the result bytes (or an int accept_stat for a refusal)."""

    def __init__(self, handle):
        self.handle = handle
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams += 1
            xid, mtype, rpcvers, prog, vers, proc = struct.unpack_from(">6I", data)
            assert mtype == 0 and rpcvers == 2
            # skip the credential and verifier (flavor, length, opaque body padded to 4)
            offset = 24
            for _ in range(2):
                _flavor, length = struct.unpack_from(">2I", data, offset)
                offset += 8 + (length + 3) // 4 * 4
            result = self.handle(prog, vers, proc, data[offset:])
            if result is None:
                continue                                   # a silent server
            accept_stat, body = (result, b"") if isinstance(result, int) else (0, result)
            reply = struct.pack(">6I", xid, 1, 0, 0, 0, accept_stat) + body
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Portmapper(RpcServer):
    """RFC 1833 portmapper version 2: SET and GETPORT (0 for unknown programs)."""

    def __init__(self):
        self.mappings: dict[tuple[int, int, int], int] = {}
        super().__init__(self._pmap)

    def _pmap(self, prog, vers, proc, args):
        if prog != drac.PMAP_PROGRAM:
            return 1                                       # PROG_UNAVAIL
        if proc == 1:                                      # PMAPPROC_SET
            program, version, protocol, port = struct.unpack(">4I", args[:16])
            self.mappings[(program, version, protocol)] = port
            return struct.pack(">I", 1)                    # bool TRUE
        if proc == 3:                                      # PMAPPROC_GETPORT
            program, version, protocol, _ = struct.unpack(">4I", args[:16])
            return struct.pack(">I", self.mappings.get((program, version, protocol), 0))
        return 3                                           # PROC_UNAVAIL


class DracServer(RpcServer):
    """rpc.dracd's DRACPROC_ADD: records the addresses (as XDR unsigned ints)."""

    def __init__(self, status: int = ADD_SUCCESS):
        self.status = status
        self.added: list[int] = []
        super().__init__(self._drac)

    def _drac(self, prog, vers, proc, args):
        if prog != 900101 or vers != 1:
            return 1
        if proc != 1:
            return 3
        self.added.append(struct.unpack(">I", args[:4])[0])
        return struct.pack(">I", self.status)

    def register(self, portmapper: Portmapper) -> None:
        """PMAPPROC_SET over UDP, as svc_register does."""
        call = struct.pack(">10I", 0x5eed, 0, 2, 100000, 2, 1, 0, 0, 0, 0)
        call += struct.pack(">4I", 900101, 1, 17, self.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(call, ("127.0.0.1", portmapper.port))
            reply = s.recv(100)
        assert struct.unpack(">I", reply[-4:])[0] == 1


@contextlib.contextmanager
def drac_peers(status: int = ADD_SUCCESS, register: bool = True):
    portmapper = Portmapper()
    server = DracServer(status)
    try:
        if register:
            server.register(portmapper)
        yield portmapper, server
    finally:
        server.close()
        portmapper.close()
