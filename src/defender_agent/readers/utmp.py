"""Who is logged in, from the utmp file (``/var/run/utmp``): the ``logged_in_users`` source.

The file is an array of glibc's ``struct utmp`` (Linux on x86, x86_64, arm,
arm64, ...: 384 bytes, native byte order): ``ut_type``, padding, ``ut_pid``,
``ut_line[32]``, ``ut_id[4]``, ``ut_user[32]``, ``ut_host[256]``, ``ut_exit``
(two shorts), ``ut_session``, ``ut_tv`` (two int32), ``ut_addr_v6[4]`` and 20
unused bytes. A logged-in user is a record of type ``USER_PROCESS`` (7).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["MAX_UTMP_BYTES", "UTMP_RECORD", "parse_utmp"]

#: One ``struct utmp`` record.
UTMP_RECORD: Final = struct.Struct("=hxxi32s4s32s256shhi2i4i20x")
#: Read at most this much of a utmp file (about 11 000 records).
MAX_UTMP_BYTES: Final = 4 * 1024 * 1024

_USER_PROCESS: Final = 7


def parse_utmp(data: bytes) -> list[str]:
    """The user names of the ``USER_PROCESS`` records, sorted, without duplicates.

    A truncated last record is ignored. Names are as recorded (undecodable
    bytes replaced); making them fit a report is the caller's job.

    >>> record = UTMP_RECORD.pack(7, 42, b"pts/0", b"ts/0", b"alice", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    >>> parse_utmp(record * 2 + record[:100])
    ['alice']
    """  # noqa: E501 - a doctest line
    names: set[str] = set()
    usable = len(data) - len(data) % UTMP_RECORD.size
    for fields in UTMP_RECORD.iter_unpack(data[:usable]):
        ut_type, user = fields[0], fields[4]
        name = user.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if ut_type == _USER_PROCESS and name:
            names.add(name)
    return sorted(names)
