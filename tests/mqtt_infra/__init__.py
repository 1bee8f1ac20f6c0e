"""Test infrastructure for MQTT: a throwaway PKI, a real mosquitto, and TLS/WebSocket/proxy fronts.

Everything binds 127.0.0.1 only and uses the standard library, the ``openssl``
command, ``websockets`` and nothing else at run time, so any test module can
reuse it:

* :mod:`.pki` — :func:`~.pki.make_pki` (CA, server, client certificates, bad ones);
* :mod:`.broker` — :class:`~.broker.Mosquitto` with an ACL imitating AWS IoT policies;
* :mod:`.fronts` — :class:`~.fronts.AlpnFront`, :class:`~.fronts.SigV4WebSocketFront`,
  :class:`~.fronts.ConnectProxy`.
"""
