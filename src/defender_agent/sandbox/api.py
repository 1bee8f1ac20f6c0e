"""The sandbox's Detect API: a key pair in the state directory and the HTTP server on loopback.

The first sandbox run generates an access key pair into ``<state dir>/api-credentials``
(an AWS credentials-format file, mode 0600, profile ``defender-agent-sandbox``); later runs
reuse it. The HTTP server (the AWS IoT API for Detect) listens on 127.0.0.1 on a free port,
and the sandbox prints the lines to add to ``~/.aws/credentials`` and an ``aws iot``
command that works against it.

>>> key_id, secret = new_key_pair()
>>> len(key_id), key_id.startswith("AKIA"), len(secret)
(20, True, 40)
>>> credentials_lines("AKIAEXAMPLE", "s3cret")
['[defender-agent-sandbox]', 'aws_access_key_id = AKIAEXAMPLE', 'aws_secret_access_key = s3cret']
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Final, Optional

from defender_agent.errors import StateError

if TYPE_CHECKING:
    from defender_agent.detect.contract import Violations
    from defender_agent.detect.registry import SqlRegistry
    from defender_agent.detect.store import DetectStore
    from defender_agent.service.http import HttpServer
    from defender_agent.service.runner import RunnerStats

__all__ = [
    "CREDENTIALS_FILE",
    "PROFILE",
    "REGION",
    "SandboxApi",
    "credentials_lines",
    "ensure_key_pair",
    "new_key_pair",
]

#: The key pair's file in the state directory.
CREDENTIALS_FILE: Final = "api-credentials"
#: The profile name in it (and in the printed ``~/.aws/credentials`` lines).
PROFILE: Final = "defender-agent-sandbox"
#: The region the sandbox's API signs and makes ARNs for.
REGION: Final = "us-east-1"

_UPPER: Final = string.ascii_uppercase + string.digits
_SECRET: Final = string.ascii_letters + string.digits + "+/"


def new_key_pair() -> tuple[str, str]:
    """A random access key id (``AKIA`` + 16) and secret (40 characters), as AWS shapes them."""
    key_id = "AKIA" + "".join(secrets.choice(_UPPER) for _ in range(16))
    secret = "".join(secrets.choice(_SECRET) for _ in range(40))
    return key_id, secret


def credentials_lines(key_id: str, secret: str) -> list[str]:
    """The ``~/.aws/credentials`` lines of the sandbox's profile."""
    return [f"[{PROFILE}]", f"aws_access_key_id = {key_id}", f"aws_secret_access_key = {secret}"]


def ensure_key_pair(state_dir: Path) -> tuple[str, str, Path]:
    """The key pair in ``state_dir`` (made on first use): ``(key id, secret, file)``.

    Raises:
        StateError: The file cannot be read or written.
    """
    from defender_agent.service.api.sigv4 import load_keys  # noqa: PLC0415

    path = state_dir / CREDENTIALS_FILE
    try:
        if path.exists():
            keys = load_keys(path.read_text(encoding="utf-8"))
            if keys:
                key_id, secret = next(iter(keys.items()))
                return key_id, secret, path
        key_id, secret = new_key_pair()
        part = path.with_name(path.name + ".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(credentials_lines(key_id, secret)) + "\n")
        part.replace(path)
    except (OSError, UnicodeError, ValueError) as exc:
        raise StateError(f"sandbox API key pair {path}: {exc}") from exc
    return key_id, secret, path


class SandboxApi:
    """The API's HTTP server for the sandbox (127.0.0.1, a free port).

    Args:
        state_dir: Where the key pair is kept.
        db_url: The sandbox service's database.
    """

    def __init__(self, state_dir: Path, db_url: str) -> None:
        self.state_dir = state_dir
        self.db_url = db_url
        self.server: Optional[HttpServer] = None
        self._own_registry: Optional[SqlRegistry] = None
        self._own_violations: Optional[DetectStore] = None
        self._key: tuple[str, str] = ("", "")

    def start(
        self,
        stats: Callable[[], RunnerStats],
        registry: Optional[SqlRegistry] = None,
        violations: Optional[Violations] = None,
    ) -> HttpServer:
        """Serve the API; ``registry``/``violations`` None: open them in the sandbox's database.

        Raises:
            ConfigError: The server cannot start.
            StateError: The key pair or the database cannot be used.
        """
        from defender_agent.config import Config  # noqa: PLC0415
        from defender_agent.detect.registry import open_registry  # noqa: PLC0415
        from defender_agent.service.api.handlers import install  # noqa: PLC0415 - aiohttp
        from defender_agent.service.http import HttpContext, HttpServer  # noqa: PLC0415
        from defender_agent.web.app import install as install_dashboard  # noqa: PLC0415

        key_id, secret, path = ensure_key_pair(self.state_dir)
        self._key = (key_id, secret)
        http = {"credentials_file": path, "region": REGION, "listen": "127.0.0.1:0"}
        config = Config(extra={"http": http})
        if registry is None:
            registry = open_registry(self.db_url, region=REGION, account=config.http.account_id)
            self._own_registry = registry
        if violations is None:
            violations = self._own_violations = _open_violations(self.db_url)
        context = HttpContext(config, self.db_url, registry, violations, stats)
        server = HttpServer("127.0.0.1", 0, context, [install, install_dashboard])
        server.start()
        self.server = server
        return server

    def lines(self) -> list[str]:
        """What the sandbox prints: the dashboard URL, the credentials lines, a command."""
        if self.server is None:
            return []
        url = self.server.url
        return [
            f"  Dashboard {url}/dashboard/ (open it in a browser; Prometheus: {url}/metrics)",
            f"  API      the AWS IoT API for Detect on {url}; add to ~/.aws/credentials:",
            *(f"             {line}" for line in credentials_lines(*self._key)),
            (
                f"           then: aws iot list-security-profiles --endpoint-url {url} "
                f"--region {REGION} --profile {PROFILE}"
            ),
        ]

    def stop(self) -> None:
        """Stop the server (and close the registry it opened); idempotent."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._own_registry is not None:
            self._own_registry.close()
            self._own_registry = None
        if self._own_violations is not None:
            self._own_violations.close()
            self._own_violations = None


def _open_violations(db_url: str) -> DetectStore:
    """Detect's store in the sandbox's database (the engine writes it, the API reads it)."""
    from defender_agent.detect.store import DetectStore  # noqa: PLC0415
    from defender_agent.service.storage import open_store  # noqa: PLC0415

    with open_store(db_url) as store:
        return DetectStore.beside(store)
