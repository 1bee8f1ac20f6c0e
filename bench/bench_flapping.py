"""Recovery on a flapping broker: in how many up-windows does the agent get a report accepted?

A real mosquitto (TLS, the test PKI) is killed and restarted ``--flaps`` times on the
same port: up for 12-16 s, down for 2-4 s (uniform, seeded). The agent runs as a
process (``defender-agent run -i 2``); the service answering it is this project's
responder on the broker's plain listener, with the transport's default reconnect
settings (what ``defender-agent service`` uses). A window *recovers* when the agent
counts at least one more accepted report by the window's end than at its start.

Run (about 3 minutes for 10 flaps; bounded, stops by itself)::

    .venv/bin/python bench/bench_flapping.py --flaps 10

Prints one JSON object: each window's length, the agent's accepted count at its end,
the first accept's delay after the broker came up, and the total recovered.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.test_agent_mqtt import RecordingResponder, agent_args  # noqa: E402
from tests.mqtt_infra.broker import Mosquitto  # noqa: E402
from tests.mqtt_infra.pki import make_pki  # noqa: E402

from defender_agent.service.responder import ResponderPolicy  # noqa: E402
from defender_agent.service.responder_service import ResponderService  # noqa: E402
from defender_agent.transport.base import MqttSettings  # noqa: E402
from defender_agent.transport.mqtt import MqttTransport  # noqa: E402


def _accepted(state: Path) -> int:
    try:
        doc = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return int((doc.get("counters") or {}).get("accepted", 0))


def run(flaps: int, seed: int, interval: int) -> dict[str, Any]:
    """Flap the broker ``flaps`` times; return the per-window figures."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-flap-") as tmp:
        base = Path(tmp)
        pki = make_pki(base / "pki")
        broker = Mosquitto(base / "mosquitto", pki, acl=True, plain_port=True)
        broker.start()
        assert broker.plain is not None
        transport = MqttTransport(
            MqttSettings(
                endpoint="127.0.0.1", port=broker.plain, client_id="dd-service", use_tls=False
            )
        )
        transport.connect()
        service_up: list[float] = []
        transport.set_connection_listener(
            lambda up, _reason: service_up.append(time.monotonic()) if up else None
        )
        responder = RecordingResponder(ResponderPolicy(min_delay_s=0))
        service = ResponderService(transport, responder)
        service.start()
        state = base / "state"
        args = agent_args(pki, broker.port)
        args[args.index("-i") + 1] = str(interval)
        log_path = base / "agent.log"
        with log_path.open("wb") as sink:
            agent = subprocess.Popen(
                [sys.executable, "-m", "defender_agent", "run", "--state-dir", str(state), *args],
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        windows: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 30
            while _accepted(state) < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            for _ in range(flaps):
                broker.kill()
                time.sleep(rng.uniform(2.0, 4.0))
                broker.start()
                up_at = time.monotonic()
                before = _accepted(state)
                length = rng.uniform(12.0, 16.0)
                first: Optional[float] = None
                while time.monotonic() - up_at < length:
                    if first is None and _accepted(state) > before:
                        first = time.monotonic() - up_at
                    time.sleep(0.1)
                after = _accepted(state)
                log_text = log_path.read_text(errors="replace")
                agent_up = log_text.count("MQTT link is up again")
                back = [t - up_at for t in service_up if t >= up_at]
                windows.append(
                    {
                        "agent_reconnects_so_far": agent_up,
                        "service_up_after_s": round(back[0], 1) if back else None,
                        "up_s": round(length, 1),
                        "accepted": after - before,
                        "first_accept_s": None if first is None else round(first, 1),
                    }
                )
        finally:
            agent.terminate()
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
            service.stop()
            transport.disconnect()
            broker.stop()
        recovered = sum(1 for w in windows if w["accepted"] > 0)
        firsts = [w["first_accept_s"] for w in windows if w["first_accept_s"] is not None]
        return {
            "flaps": flaps,
            "interval_s": interval,
            "recovered": recovered,
            "first_accept_max_s": max(firsts) if firsts else None,
            "windows": windows,
            "service_answered": len(responder.accepted),
        }


def main() -> None:
    """Parse the options, run, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flaps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--interval", type=int, default=2)
    options = parser.parse_args()
    print(json.dumps(run(options.flaps, options.seed, options.interval), indent=2))


if __name__ == "__main__":
    main()
