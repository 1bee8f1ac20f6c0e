"""Test infrastructure for Greengrass: a fake nucleus that the real awsiotsdk IPC client talks to.

* :mod:`.eventstream` — the event-stream message format (prelude, typed headers, CRCs);
* :mod:`.nucleus` — :class:`~.nucleus.FakeNucleus`: eventstream-RPC on a Unix socket,
  ``PublishToIoTCore``/``SubscribeToIoTCore`` bridged to a real mosquitto,
  ``GetConfiguration``/``SubscribeToConfigurationUpdate``, access control, restarts.
"""
