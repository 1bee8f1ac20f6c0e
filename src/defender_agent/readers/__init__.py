"""Readers: each reads one metric source (/proc, netlink, psutil) and parses it purely.

* :mod:`.sockets` — ``net/tcp``, ``net/tcp6``, ``net/udp``, ``net/udp6`` (or netlink
  sock_diag, or psutil): one read per cycle, folded into ports, connections, and
  what the socket-based custom metrics need.
* :mod:`.listening_ports` — ``listening_tcp_ports`` and ``listening_udp_ports``.
* :mod:`.tcp_connections` — ``tcp_connections.established_connections``.
* :mod:`.interfaces` — ``net/if_inet6``, ``net/fib_trie``, ``net/route``: interface names.
* :mod:`.network_stats` — ``net/dev``: ``network_stats``, through :mod:`defender_agent.delta`.
* :mod:`.cpu_usage` — ``stat``: the ``cpu_usage`` custom metric.
* :mod:`.meminfo`, :mod:`.loadavg`, :mod:`.utmp` — the ``memory_usage``,
  ``load_average`` and ``logged_in_users`` custom metrics.
* :mod:`.health` — how each source fared (missing files, malformed lines, time).
"""
