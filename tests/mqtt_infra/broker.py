"""A real mosquitto broker for tests, in the foreground, on 127.0.0.1 only.

The TLS listener requires a client certificate from the test CA, TLS 1.2 or
newer, and takes the certificate's CN as the username
(``use_identity_as_username``), so the ACL can be written per thing the way an
AWS IoT policy is:

* a client may publish only to ``$aws/things/<CN>/defender/metrics/{json,cbor}``
  and read only ``.../{json,cbor}/{accepted,rejected}`` of its own thing;
* the users ``subscriber`` and ``responder`` may read and write ``$aws/#``.

mosquitto 2.0 over MQTT 3.1.1 PUBACKs a publish the ACL forbids and drops it;
over MQTT 5 the PUBACK carries reason 135 (not authorized).

The optional plain listener (``plain_port=True``) has no TLS, no ACL and
anonymous access: it is for a local responder on a plain connection.

mosquitto's ``acl_file`` grants every SUBSCRIBE and filters at delivery; AWS IoT refuses
the SUBSCRIBE itself (SUBACK 0x80). ``allow_subscribe`` imitates that with mosquitto's
dynamic-security plugin instead of the ACL file: the TLS clients may subscribe to the
listed topic filters only (and publish nowhere). ``refuse_connect`` refuses every CONNECT
after a good TLS handshake (CONNACK "not authorized"), as a policy without ``iot:Connect``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from defender_agent.transport.mqtt import MqttTransport

from tests.mqtt_infra.pki import Pki

__all__ = ["Mosquitto", "free_port", "mosquitto_binary"]

ACL = """\
# Imitates an AWS IoT policy: %u is the client certificate's CN (use_identity_as_username).
pattern write $aws/things/%u/defender/metrics/json
pattern write $aws/things/%u/defender/metrics/cbor
pattern read $aws/things/%u/defender/metrics/json/accepted
pattern read $aws/things/%u/defender/metrics/json/rejected
pattern read $aws/things/%u/defender/metrics/cbor/accepted
pattern read $aws/things/%u/defender/metrics/cbor/rejected

user subscriber
topic readwrite $aws/#

user responder
topic readwrite $aws/#
"""

START_TIMEOUT_S = 10.0


def dynsec_plugin() -> Optional[str]:
    """mosquitto's dynamic-security plugin (Debian: /usr/lib/<arch>/), if installed."""
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    found += sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    return str(found[0]) if found else None


def mosquitto_binary() -> Optional[str]:
    """The mosquitto executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """A mosquitto process with a TLS listener (and optionally a plain one) on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The config,
    ACL and log live in ``directory``.

    Args:
        directory: where the config, ACL file and ``mosquitto.log`` go (created).
        pki: the test PKI (CA, server certificate and key).
        port: the TLS listener's port; a free one when ``None``.
        acl: apply the AWS-IoT-like ACL on the TLS listener.
        plain_port: also open a plain listener (no TLS, anonymous, no ACL).
    """

    def __init__(
        self,
        directory: Path,
        pki: Pki,
        port: Optional[int] = None,
        acl: bool = True,
        plain_port: bool = False,
        allow_subscribe: Optional[dict[str, list[str]]] = None,
        refuse_connect: bool = False,
    ) -> None:
        self.directory = directory
        self.pki = pki
        self.port: int = port if port is not None else free_port()
        self.plain: Optional[int] = free_port() if plain_port else None
        self.acl = acl
        self.allow_subscribe = allow_subscribe  # client CN -> topic filters it may subscribe to
        self.refuse_connect = refuse_connect  # CONNACK "not authorized" after a good handshake
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self.conf = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"

    # -- lifecycle --------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings true",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto would drop to user "mosquitto", which cannot read
            # the 0600 keys.
            lines.append("user root")
        lines += [
            "",
            f"listener {self.port} 127.0.0.1",
            "protocol mqtt",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
        ]
        if self.refuse_connect:  # a password nobody has: every CONNECT is refused
            passwords = self.directory / "passwords"
            passwords.write_text("")
            lines[-2:] = ["allow_anonymous false", f"password_file {passwords}"]
        if self.allow_subscribe is not None:
            lines += self._dynsec()
        elif self.acl:
            acl_file = self.directory / "aws_acl.conf"
            acl_file.write_text(ACL)
            lines.append(f"acl_file {acl_file}")
        if self.plain is not None:
            lines += [
                "",
                f"listener {self.plain} 127.0.0.1",
                "protocol mqtt",
                "allow_anonymous true",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _dynsec(self) -> list[str]:
        """The dynamic-security plugin's lines, and its JSON file (SUBSCRIBE checked)."""
        assert self.allow_subscribe is not None
        doc = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [
                {"username": name, "roles": [{"rolename": name}]} for name in self.allow_subscribe
            ],
            "groups": [],
            "roles": [
                {
                    "rolename": name,
                    "acls": [
                        {"acltype": "subscribeLiteral", "topic": topic, "allow": True}
                        for topic in topics
                    ],
                }
                for name, topics in self.allow_subscribe.items()
            ],
        }
        config = self.directory / "dynsec.json"
        config.write_text(json.dumps(doc))
        plugin = dynsec_plugin()
        if plugin is None:
            raise RuntimeError("mosquitto's dynamic-security plugin is not installed")
        return [f"plugin {plugin}", f"plugin_opt_config_file {config}"]

    def start(self) -> None:
        """Start the broker and wait until its listeners accept connections.

        Raises:
            RuntimeError: mosquitto is not installed, a port is already taken (an orphan
                broker would answer instead), or the broker did not come up.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("this mosquitto is already running")
        exe = mosquitto_binary()
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        ports = [self.port] + ([self.plain] if self.plain is not None else [])
        for port in ports:
            if _listening(port):
                raise RuntimeError(f"port {port} is already listening; refusing to start")
        self._write_config()
        self._proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(ports)
        while pending:
            if self._proc.poll() is not None:
                raise RuntimeError(self._failure("exited while starting"))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self._failure(f"did not listen within {START_TIMEOUT_S} s"))
            if _listening(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.01)
        assert self._proc.poll() is None, self._failure("died right after starting")

    def _failure(self, what: str) -> str:
        stderr = b""
        if self._proc is not None and self._proc.poll() is not None and self._proc.stderr:
            stderr = self._proc.stderr.read()
        return f"mosquitto {what}: {stderr.decode(errors='replace').strip()} | log: {self.log()[-2000:]}"

    def _reap(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL. Does nothing when not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused (SIGSTOP) broker would not see SIGTERM
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker (a crash); :meth:`start` again reuses the same port(s)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        self._reap()

    @property
    def pid(self) -> Optional[int]:
        """The running broker's process id (for SIGSTOP/SIGCONT tests), else ``None``."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.pid is not None

    def log(self) -> str:
        """The broker's log so far ('' before it wrote one)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


def connect_device(
    broker: Mosquitto,
    thing: str,
    on_reply: Callable[[str, bytes], None],
    timeout_s: float = 20.0,
) -> MqttTransport:
    """A plain-TCP device connection for ``thing``, subscribed to its JSON replies."""
    from defender_agent.transport.base import MqttSettings
    from defender_agent.transport.mqtt import MqttTransport

    assert broker.plain is not None
    transport = MqttTransport(
        MqttSettings(
            endpoint="127.0.0.1",
            port=broker.plain,
            client_id=f"device-{thing}",
            use_tls=False,
            connect_timeout_s=timeout_s,
        )
    )
    transport.connect()
    transport.subscribe(f"$aws/things/{thing}/defender/metrics/json/+", on_reply)
    return transport
