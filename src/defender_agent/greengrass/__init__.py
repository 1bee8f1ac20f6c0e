"""Greengrass: the agent as a Greengrass v2 component (Java nucleus and nucleus lite), and v1.

* :mod:`.settings` — a component configuration as the agent's settings (pure);
* :mod:`.component` — :class:`~.component.Component`: connect to the nucleus, read the
  configuration, run the agent's loop over IPC, apply configuration updates live;
* :mod:`.v1` — the long-lived Lambda handler of a Greengrass v1 core (Python 3.8).

The transport is :class:`defender_agent.transport.greengrass.GreengrassTransport`.
``python -m defender_agent.greengrass`` is ``defender-agent greengrass``.
"""

from __future__ import annotations

__all__: list[str] = []
