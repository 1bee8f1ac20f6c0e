"""Collectors: each reads one kind of device-side metric from /proc and parses it purely.

| module | reads | fills |
| --- | --- | --- |
| :mod:`.sockets` | ``net/tcp``, ``net/tcp6``, ``net/udp``, ``net/udp6`` (or netlink sock_diag) | socket rows |
| :mod:`.listening_ports` | socket rows + :mod:`.interfaces` | ``listening_tcp_ports``, ``listening_udp_ports`` |
| :mod:`.tcp_connections` | socket rows + :mod:`.interfaces` | ``tcp_connections.established_connections`` |
| :mod:`.network_stats` | ``net/dev`` | ``network_stats`` (through :mod:`defender_agent.delta`) |
| :mod:`.cpu_usage` | ``stat`` | custom metric ``cpu_usage`` |
| :mod:`.interfaces` | ``net/if_inet6``, ``net/fib_trie``, ``net/route`` | interface names |
"""
