"""Collectors: each reads one kind of device-side metric from /proc and parses it purely.

* :mod:`.sockets` — ``net/tcp``, ``net/tcp6``, ``net/udp``, ``net/udp6`` (or netlink
  sock_diag): the socket rows shared by the next two.
* :mod:`.listening_ports` — ``listening_tcp_ports`` and ``listening_udp_ports``.
* :mod:`.tcp_connections` — ``tcp_connections.established_connections``.
* :mod:`.interfaces` — ``net/if_inet6``, ``net/fib_trie``, ``net/route``: interface names.
* :mod:`.network_stats` — ``net/dev``: ``network_stats``, through :mod:`defender_agent.delta`.
* :mod:`.cpu_usage` — ``stat``: the ``cpu_usage`` custom metric.
"""
