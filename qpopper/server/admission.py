"""Which connections the master lets in: max-children and max-children-per-address, the
address a PROXY header reports, and making room by ending the connection that waited longest
without logging in (docs/privsep.md, "Connection limits")."""

from __future__ import annotations

import os
import socket
import syslog

from qpopper.addresses import address_group, parse_networks
from qpopper.pop3.responses import TOO_MANY_CONNECTIONS, RespCode, err
from qpopper.server.session import DISPLACE_SIGNAL


class Admission:
    """Part of Master (server/master.py): see the module docstring."""

    def _proxy_networks(self) -> tuple:
        if getattr(self, "_proxy_cfg", None) is not self.cfg:      # parsed once per (re)load
            self._proxy_nets = tuple(net for entry in self.cfg.proxy_trusted_networks
                                     for net in parse_networks(entry))
            self._proxy_cfg = self.cfg
        return self._proxy_nets

    def _make_room(self, group: str | None, client_ip: str) -> str | None:
        """Room for a new connection from `group`: when a limit is reached, the connection
        that has waited longest without logging in (from that group for the per-address
        limit) is ended for it — Dovecot's "connection queue full" — so idle sockets cannot
        lock real users out; logged-in sessions are never ended. Returns why the newcomer is
        refused when every slot holds a logged-in session, else None."""
        for _ in range(2):                    # at most one slot per limit
            refusal, same_group_only = self._over_limit(group)
            if refusal is None:
                return None
            self._read_logins()               # a session that just logged in is no victim
            victims = [pid for pid, child in self.children.items()
                       if not (child.displaced or child.logged_in)
                       and (child.group == group or not same_group_only)]
            if not victims:
                return refusal
            pid = min(victims, key=lambda p: self.children[p].started)
            self._displace(pid, client_ip, refusal)
        return self._over_limit(group)[0]

    def _over_limit(self, group: str | None) -> tuple[str | None, bool]:
        """(why a new connection from `group` is over a limit, or None; whether only a
        connection of that group may make room for it)."""
        total = self.cfg.max_children
        per_address = self.cfg.max_children_per_address
        live = len(self.children) - self._displaced
        if total and live >= total:
            return f"{live} sessions running (max-children {total})", False
        if per_address and group is not None and self.per_address[group] >= per_address:
            return (f"{self.per_address[group]} sessions from {group} "
                    f"(max-children-per-address {per_address})", True)
        return None, False

    def _displace(self, pid: int, client_ip: str, why: str) -> None:
        child = self.children[pid]
        child.displaced = True
        self._displaced += 1
        self._uncount(child.group)
        self.log(syslog.LOG_NOTICE, f"{why}: ending a connection from {child.group} that "
                                    f"has not logged in, for one from {client_ip}")
        try:
            # the pre-login process says why and ends (session.DISPLACE_SIGNAL); the monitor
            # and a user session that has just started ignore it
            os.killpg(pid, DISPLACE_SIGNAL)
        except ProcessLookupError:
            pass

    def _uncount(self, group: str | None) -> None:
        if group is None:
            return                               # a proxied client not yet reported
        self.per_address[group] -= 1
        if self.per_address[group] <= 0:
            del self.per_address[group]          # no state left behind per address

    def _read_logins(self) -> None:
        """The monitors' notices: `PID` (its user session runs), `PID ADDRESS` (the
        client address of a proxied connection, from its PROXY header) and `PID spool-dir
        STATE` (what a health check found: Lifecycle.spool_health_found)."""
        try:
            data = os.read(self._logins_r, 4096)
        except BlockingIOError:
            return
        *lines, self._notices = (self._notices + data).split(b"\n")
        for line in lines:
            words = line.decode("ascii", "replace").split()
            if len(words) == 3 and words[1] == "spool-dir":
                # about the host, not the child: taken even when its monitor, which ends at
                # once after a check, was reaped before its notice was read
                self.spool_health_found(words[2])
                continue
            if not words or not words[0].isdigit() or int(words[0]) not in self.children:
                continue
            pid = int(words[0])
            if len(words) == 1:
                self.children[pid].logged_in = True
            elif len(words) == 2:
                self._proxied_address(pid, words[1])

    def _proxied_address(self, pid: int, client_ip: str) -> None:
        """A proxied connection's client is known: count it for max-children-per-address,
        and over the limit end the connection of that address that has waited longest
        without logging in — this one when all the others are logged in (its pre-login
        process answers -ERR [SYS/TEMP]).
        docs/scale-out.md, "Where the client's address comes from"."""
        child = self.children[pid]
        if child.displaced or child.group is not None:
            return
        child.group = group = address_group(client_ip)
        self.per_address[group] += 1
        limit = self.cfg.max_children_per_address
        if not limit or self.per_address[group] <= limit:
            return
        why = (f"{self.per_address[group] - 1} sessions from {group} "
               f"(max-children-per-address {limit})")
        waiting = [p for p, c in self.children.items()
                   if c.group == group and not (c.displaced or c.logged_in) and p != pid]
        victim = min(waiting, key=lambda p: self.children[p].started) if waiting else pid
        self._displace(victim, client_ip, why)

    def _refuse(self, conn: socket.socket, client_ip: str, why: str, answer: bool = True) -> None:
        """Over a limit: answer from the master, without forking, and close."""
        self.log(syslog.LOG_NOTICE, f"Refused connection from {client_ip}: {why}")
        try:
            conn.setblocking(False)
            if answer:
                conn.send(err(TOO_MANY_CONNECTIONS, RespCode.SYS_TEMP))
        except OSError:
            pass
        finally:
            conn.close()
