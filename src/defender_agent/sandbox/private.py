"""The sandbox's private directories: its state directory and the PKI in it.

>>> import shutil, tempfile
>>> from pathlib import Path
>>> base = Path(tempfile.mkdtemp())
>>> oct(private_dir(base / "state" / "pki", "sandbox PKI directory").stat().st_mode & 0o777)
'0o700'
>>> (base / "shared").mkdir(mode=0o755)
>>> oct(private_dir(base / "shared", "sandbox state directory").stat().st_mode & 0o777)
'0o755'
>>> oct(private_dir(base / "shared", "a directory", tighten=True).stat().st_mode & 0o777)
'0o700'
>>> _ = (base / "file").write_text("x")
>>> private_dir(base / "file" / "sandbox", "sandbox state directory")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
defender_agent.errors.StateError: sandbox state directory .../file/sandbox: Not a directory
>>> shutil.rmtree(base)
"""

from __future__ import annotations

import os
from pathlib import Path

from defender_agent.errors import StateError

__all__ = ["private_dir"]


def private_dir(path: Path, what: str, *, tighten: bool = False) -> Path:
    """Create ``path`` (mode 0700), or make sure it is a real directory of this user.

    Args:
        path: The directory.
        what: What it is, for the messages (``sandbox state directory``).
        tighten: Make an existing directory that others may read 0700 (for one the
            sandbox made itself; never for a directory the user named).

    Returns:
        ``path``.

    Raises:
        StateError: It cannot be made, is a symbolic link or no directory, belongs to
            another user, or is not writable (one line, naming ``what`` and ``path``).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise StateError(f"{what} {path}: {exc.strerror or exc}") from exc
    if path.is_symlink() or not path.is_dir():
        raise StateError(f"{what} {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise StateError(f"{what} {path}: owned by another user")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"{what} {path}: not writable")
    if tighten and info.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            raise StateError(f"{what} {path}: {exc.strerror or exc}") from exc
    return path
