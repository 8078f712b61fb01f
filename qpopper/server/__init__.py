"""The server's processes and what they share (docs/privsep.md).

master.py accepts connections (root); monitor.py is the per-connection privileged monitor
(and, after login, the user session; also the inetd entry); prelogin.py is the unprivileged,
chrooted process that talks to the client before login; session.py drives the protocol over
a socket (TLS in tls.py); privsep.py is the one place that changes user and group ids and
lists what runs as root. monitor_wire.py is the monitor's frame format, drac.py the
POP-before-SMTP notice, reverse_lookup.py the forked DNS lookup, sdnotify.py systemd's notify.
"""
