"""``defender-agent doctor``: why is nothing arriving? Every link of the chain, checked in order.

:func:`run_checks` takes the agent's resolved configuration and checks, in this order,
each with its own time limit: the TLS files (readable, matching, in date, the
certificate's remaining life), the key's permissions, the thing name, the system
clock, name resolution, the TCP connection, the TLS handshake, MQTT CONNECT, SUBSCRIBE
to the replies, the state directory, the proc root and its socket source, and the
interval. A check whose prerequisite failed is skipped (shown, not hidden). The
configuration itself is checked by the command line, which loads it.

Nothing is published unless ``publish_test`` is given: a report counts against
Device Defender's per-thing throttle.

* :mod:`.result` — the result type and its text/JSON forms;
* :mod:`.local` — file, clock, state, /proc and interval checks (pure judgements);
* :mod:`.policy` — IoT policy statements and what a refusal means (pure);
* :mod:`.probe` — resolution, TCP and TLS probes with :mod:`ssl` (each bounded);
* :mod:`.mqtt` — CONNECT, SUBSCRIBE and the optional test report, with the agent's transport.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from defender_agent.config import Config
from defender_agent.doctor.local import (
    cert_dates,
    check_clock,
    check_interval,
    check_key_permissions,
    check_proc,
    check_state_dir,
    check_thing_name,
    check_tls_files_result,
    decode_certificate,
)
from defender_agent.doctor.probe import (
    TimedOutError,
    check_resolve,
    check_tcp,
    check_tls,
    server_time,
    within,
)
from defender_agent.doctor.result import Result, as_json, exit_code, render
from defender_agent.state import default_state_dir

__all__ = ["Limits", "Result", "as_json", "exit_code", "render", "run_checks"]


class Limits:
    """Time limits, in seconds (the whole run stays under 30 s on a black-holed endpoint).

    Attributes:
        resolve: name resolution.
        tcp: the TCP connection.
        tls: the TLS handshake.
        clock: the server-time probe (each of its connections).
        mqtt: the MQTT connection, and each SUBACK.
        local: each local check.
    """

    resolve = 5.0
    tcp = 5.0
    tls = 5.0
    clock = 2.0
    mqtt = 6.0
    local = 10.0


def _bounded(name: str, seconds: float, check: Callable[[], list[Result]]) -> list[Result]:
    """Run a check under its time limit; a check that overruns fails, naming the limit."""
    started = time.monotonic()
    try:
        results = within(seconds, check)
    except TimedOutError:
        return [
            Result(
                name,
                "fail",
                f"did not finish within {seconds:g} s",
                fix="something on the way does not answer: see the checks before this one",
                seconds=seconds,
            )
        ]
    took = time.monotonic() - started
    return [r if r.seconds else Result(r.name, r.status, r.detail, r.fix, took) for r in results]


def run_checks(
    config: Config,
    *,
    publish_test: bool = False,
    account: Optional[str] = None,
    limits: Optional[Limits] = None,
    now: Callable[[], float] = time.time,
) -> list[Result]:
    """Every check after the configuration's, in order (see the module's docstring)."""
    limits = limits or Limits()
    results: list[Result] = []
    settings = config.mqtt_settings()
    dry = config.agent.dry_run
    if dry:
        results.append(Result("CA, certificate and key", "skip", "dry run: no connection"))
    else:
        results += _bounded(
            "CA, certificate and key",
            limits.local,
            lambda: check_tls_files_result(settings, now()),
        )
        results += _bounded(
            "key permissions", limits.local, lambda: [check_key_permissions(settings)]
        )
    results.append(check_thing_name(config))
    files_ok = all(r.status != "fail" for r in results)
    if dry:
        network = "dry run: nothing is sent (drop dry_run to check the connection)"
        results += [
            Result(name, "skip", network)
            for name in ("system clock", "name resolution", "TCP connect", "TLS handshake", "MQTT")
        ]
        results[-5] = check_clock(now(), None, None, None)
    else:
        cert_nb = None
        if settings.cert_file is not None and settings.use_tls and not settings.websocket:
            dates = cert_dates(decode_certificate(settings.cert_file))
            cert_nb = dates[0] if dates else None

        def clock() -> list[Result]:
            told = server_time(settings, limits.clock)
            return [check_clock(now(), cert_nb, told.not_before, told.now, told.source)]

        results += _bounded("system clock", 3 * limits.clock + 1, clock)
        results += _network(config, limits, files_ok, publish_test, account)
    state_dir = config.agent.state_dir or default_state_dir()
    results += _bounded("state directory", limits.local, lambda: [check_state_dir(state_dir)])
    results += _bounded("proc", limits.local, lambda: [check_proc(config)])
    results.append(check_interval(config))
    return results


def _network(
    config: Config, limits: Limits, files_ok: bool, publish_test: bool, account: Optional[str]
) -> list[Result]:
    settings = config.mqtt_settings()
    resolved, _addresses = check_resolve(settings, limits.resolve)
    results = [resolved]
    if resolved.status == "fail":
        return results + _skipped("name resolution")
    results += _bounded("TCP connect", limits.tcp + 1, lambda: [check_tcp(settings, limits.tcp)])
    if results[-1].status == "fail":
        return results + _skipped("TCP connect")
    results += _bounded(
        "TLS handshake", 2 * limits.tls + 2, lambda: [check_tls(settings, limits.tls)]
    )
    if results[-1].status == "fail":
        return results + _skipped("TLS handshake")
    if not files_ok:
        return results + _skipped("the TLS files")
    from defender_agent.doctor.mqtt import check_mqtt  # noqa: PLC0415 - awscrt

    publish = _test_report(config) if publish_test else None
    budget = 3 * limits.mqtt + 2 + (15.0 if publish_test else 0.0)
    return results + _bounded(
        "MQTT",
        budget,
        lambda: check_mqtt(
            settings,
            thing=config.effective_thing_name,
            fmt=config.agent.format,
            timeout=limits.mqtt,
            account=account,
            publish=publish,
        ),
    )


#: The network checks, in order (the ones after a failure are shown as skipped).
_NETWORK = ("name resolution", "TCP connect", "TLS handshake", "MQTT CONNECT", "MQTT SUBSCRIBE")


def _skipped(after: str) -> list[Result]:
    later = _NETWORK[_NETWORK.index(after) + 1 :] if after in _NETWORK else _NETWORK[3:]
    return [Result(name, "skip", f"not tried: {after} failed") for name in later]


def _test_report(config: Config) -> Callable[[], tuple[int, bytes]]:
    """Makes one real report: a baseline, a second later the report (encoded as the agent does)."""

    def make() -> tuple[int, bytes]:
        from defender_agent.cycle import Collector  # noqa: PLC0415
        from defender_agent.report.fit import encode_fitted  # noqa: PLC0415

        collector = Collector(config.collector_config(), state_dir=config.agent.state_dir)
        collector.cycle()
        time.sleep(1.0)
        report = collector.cycle()
        assert report is not None  # the second cycle always makes one
        encoded = encode_fitted(report, config.agent.format, short_names=config.agent.short_names)
        return report.report_id, encoded.payload

    return make
