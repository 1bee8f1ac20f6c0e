"""The whole settings table: the core sections' settings and, on first use, the others'.

The service's and the sandbox's sections (:mod:`.extra_sections`) are imported only
when a setting of theirs is looked up, so ``run`` and ``collect`` do not build them.

>>> by_name = {s.name: s for s in all_settings()}
>>> by_name["interval"].env, by_name["interval"].where, by_name["interval"].default_text
('DEFENDER_AGENT_INTERVAL', 'agent.interval', '300')
>>> by_name["log_level"].where, by_name["service_port"].env
('logging.level', 'DEFENDER_AGENT_SERVICE_PORT')
>>> by_name["include_custom_metrics"].where, by_name["include_custom_metrics"].owner
('agent.include_custom_metrics', 'collector')
"""

from __future__ import annotations

from defender_agent.config.sections import CORE_SETTINGS, Setting

__all__ = ["all_settings", "setting_named"]


def all_settings() -> tuple[Setting, ...]:
    """Every setting, in section order (imports the service's and the sandbox's sections)."""
    from defender_agent.config.extra_sections import EXTRA_SETTINGS  # noqa: PLC0415

    return CORE_SETTINGS + EXTRA_SETTINGS


def setting_named(name: str) -> Setting:
    """The setting with this flat name (KeyError if there is none).

    >>> setting_named("service_min_delay").where
    'service.min_delay'
    """
    for setting in CORE_SETTINGS:
        if setting.name == name:
            return setting
    for setting in all_settings():
        if setting.name == name:
            return setting
    raise KeyError(name)
