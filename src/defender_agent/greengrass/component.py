"""The Greengrass v2 component: the agent over the nucleus's IPC, configured by the deployment.

:class:`Component` runs what ``defender-agent greengrass`` starts:

1. connect to the nucleus, waiting with backoff while it is not up;
2. ``GetConfiguration``: the component configuration becomes the agent's
   settings (:mod:`.settings`); a bad one is a one-line error and exit 2;
3. run the same :class:`~defender_agent.agent.Agent` as ``run`` (reply matching,
   Throttled hold, restart-safe baseline, status file, custom metrics) on a
   :class:`~defender_agent.transport.greengrass.GreengrassTransport`;
4. ``SubscribeToConfigurationUpdate``: a changed configuration is read again
   (updates that come together are read once) and applied between cycles with
   :meth:`~defender_agent.agent.Agent.reconfigure`, keeping the baseline; a bad
   update is one ERROR line naming the key, and the running configuration stays.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from defender_agent.agent import Agent
from defender_agent.config import Config
from defender_agent.cycle import Collector
from defender_agent.errors import ConfigError, TransportError
from defender_agent.greengrass.settings import config_from_component
from defender_agent.schedule import backoff_delay
from defender_agent.state import StateDir, default_state_dir
from defender_agent.transport.greengrass import GreengrassTransport

__all__ = ["THING_ENV", "Component"]

log = logging.getLogger(__name__)

#: The core's thing name, set by the nucleus for its components.
THING_ENV = "AWS_IOT_THING_NAME"
#: Updates arriving within this long of each other are read once.
SETTLE_S = 0.5


class Component:
    """The agent as a Greengrass v2 component.

    Args:
        transport: the IPC transport (not connected yet).
        flags: settings given as options (they win over the component configuration).
        config_file: a TOML file under the component configuration (``--config``).
        labels: the options' spellings, for messages.
        environ: the environment (``AWS_IOT_THING_NAME``, ``DEFENDER_AGENT_*``).
        make_collector: builds a collector for a configuration (tests swap it).
        rng: the random source of the connect backoff.
    """

    def __init__(
        self,
        transport: GreengrassTransport,
        *,
        flags: Optional[Mapping[str, object]] = None,
        config_file: Optional[Path] = None,
        labels: Optional[Mapping[str, str]] = None,
        environ: Optional[Mapping[str, str]] = None,
        make_collector: Optional[Callable[[Config], Collector]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.transport = transport
        self.flags = dict(flags or {})
        self.config_file = config_file
        self.labels = dict(labels or {})
        self.environ = dict(os.environ if environ is None else environ)
        self.thing_name = self.environ.get(THING_ENV) or None
        self.make_collector = make_collector or _collector
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.stop_event = threading.Event()
        self.agent: Optional[Agent] = None
        self.config: Optional[Config] = None
        self._changed = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ configuration
    def load(self, value: Mapping[str, Any]) -> Config:
        """The configuration for a component configuration value (ConfigError: one line)."""
        return config_from_component(
            value,
            thing_name=self.thing_name,
            flags=self.flags,
            environ=self.environ,
            config_file=self.config_file,
            labels=self.labels,
        )

    def apply_update(self) -> bool:
        """Read the component configuration again and apply it; whether it was applied.

        A bad configuration is logged in one line naming the key, and the running one
        stays; an unchanged one is not applied again.
        """
        agent, current = self.agent, self.config
        if agent is None or current is None:
            return False
        try:
            config = self.load(self.transport.get_configuration())
        except ConfigError as exc:
            log.error("configuration update refused, the previous one stays: %s", exc)  # noqa: TRY400
            return False
        except TransportError as exc:
            log.warning("cannot read the configuration update: %s", exc)
            return False
        if _settings(config) == _settings(current):
            log.debug("configuration update: no change for the agent")
            return False
        collector = None
        if config.collector != current.collector:
            try:
                collector = self.make_collector(config)
            except ConfigError as exc:
                log.error("configuration update refused, the previous one stays: %s", exc)  # noqa: TRY400
                return False
        self.config = config
        agent.reconfigure(config, collector)
        return True

    def _on_update(self) -> None:
        self._changed.set()

    def _watch_updates(self) -> None:
        while not self.stop_event.is_set():
            self._changed.wait()
            if self.stop_event.is_set():
                return
            self.stop_event.wait(SETTLE_S)  # updates of one deployment come one key at a time
            self._changed.clear()
            if self.stop_event.is_set():
                return
            try:
                self.apply_update()
            except Exception:  # a bug: this update is lost, later ones are still applied
                log.exception("applying the configuration update failed; the previous one stays")

    # ------------------------------------------------------------------ running
    def connect(self) -> Optional[dict[str, Any]]:
        """Connect and read the configuration, backing off while the nucleus is not up.

        Returns:
            The component configuration, or ``None`` when stopped meanwhile.
        """
        attempt = 0
        while not self.stop_event.is_set():
            try:
                self.transport.connect()
                return self.transport.get_configuration()
            except TransportError as exc:  # not up, refused, or dropped before the answer
                delay = backoff_delay(attempt, rng=self.rng)
                attempt += 1
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.stop_event.wait(delay)
        return None

    def run(self) -> int:
        """Run until :meth:`stop`: 0, or 2 after a fatal error (logged in one line)."""
        try:
            value = self.connect()
            if value is None:
                return 0
            try:
                config = self.load(value)
                collector = self.make_collector(config)
            except ConfigError as exc:
                log.error("cannot start: %s", exc)  # noqa: TRY400 - one line
                return 2
            self.config = config
            state = StateDir(config.agent.state_dir or default_state_dir(self.environ))
            agent = Agent(config, collector, self.transport, state)
            self.agent = agent
            if self.stop_event.is_set():
                return 0
            try:
                self.transport.watch_configuration(self._on_update)
            except TransportError as exc:  # reports still go out; updates need a restart
                log.warning("configuration updates will not be applied: %s", exc)
            self._watcher = threading.Thread(
                target=self._watch_updates, name="defender-agent-config", daemon=True
            )
            self._watcher.start()
            return agent.run()
        finally:
            self.stop_event.set()
            self._changed.set()
            self.transport.disconnect()

    def stop(self) -> None:
        """Ask the component to finish (signal-safe)."""
        self.stop_event.set()
        self._changed.set()
        if self.agent is not None:
            self.agent.stop()


def _collector(config: Config) -> Collector:
    state = config.agent.state_dir or default_state_dir()
    return Collector(config.collector, state_dir=state)


def _settings(config: Config) -> tuple[object, ...]:
    """What the agent uses of a configuration (``sources`` aside), for change detection."""
    return (config.agent, config.collector, config.logging)
