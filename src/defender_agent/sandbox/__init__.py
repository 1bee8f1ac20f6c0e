"""The sandbox: the agent, the local Device Defender service and a broker on one machine.

``defender-agent sandbox`` (:mod:`defender_agent.cli.sandbox`) runs it. The parts:

* :mod:`.pki` — a throwaway PKI made with ``cryptography`` (CA, broker, thing and
  service certificates; ECDSA P-256; reused while still good);
* :mod:`.broker` — a strict embedded amqtt 0.12.1 broker (client certificates
  required, ``$aws/`` topics delivered, identity from the certificate CN, an AWS IoT
  policy per thing) on 127.0.0.1, in its own thread;
* :mod:`.app` — the orchestration: PKI, broker, service, agent, and one line per
  report and per reply.

The modules are imported on demand: :mod:`.pki` needs ``cryptography`` and
:mod:`.broker` needs ``amqtt`` (the ``sandbox`` extra, Python 3.10 or later);
:mod:`.app` needs neither to run against an existing plain broker (``--broker mqtt://...``).
"""
