"""Detect's control plane in the service's database: profiles, custom metrics, groups.

The AWS IoT API (:mod:`defender_agent.service.api`) writes here; the engine reads it
through :class:`~defender_agent.detect.contract.Registry`. Everything is in the database
(SQLite or PostgreSQL, the service's own ``db_url``), so several service processes see
one registry; every change is one transaction and adds 1 to a counter in the database,
:meth:`SqlRegistry.generation`, which readers use to know when to reload.

Tables (their own schema-version table, ``detect_registry_schema``):

* ``security_profiles``: name, ARN, version (1, +1 per update), the profile's AWS
  members as one JSON document (``behaviors``, ``alertTargets``, ...), created and
  modified times;
* ``custom_metrics``: name, ARN, ``metricType``, ``displayName``, times;
* ``thing_groups`` and ``thing_group_members``;
* ``profile_targets``: which profile is attached to which target ARN;
* ``registry_generation``: one row, the counter.

Errors are :class:`RegistryError` whose ``code`` is AWS's exception name
(``ResourceNotFoundException``, ``ResourceAlreadyExistsException``,
``VersionConflictException``, ``InvalidRequestException``, ``LimitExceededException``).

>>> reg = open_registry("sqlite://:memory:", region="eu-west-1", account="111122223333")
>>> reg.create_custom_metric("open_files", "number", None, now=1.0)["metricArn"]
'arn:aws:iot:eu-west-1:111122223333:custommetric/open_files'
>>> reg.create_profile("p", {"behaviors": []}, now=2.0)["securityProfileArn"]
'arn:aws:iot:eu-west-1:111122223333:securityprofile/p'
>>> reg.attach("p", reg.arn("all/things"))
>>> [(p.name, p.version, p.targets) for p in reg.profiles()]
[('p', 1, ('arn:aws:iot:eu-west-1:111122223333:all/things',))]
>>> reg.generation()
3
>>> reg.close()
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Final, Optional

from defender_agent.dburl import is_keyword_string, mask_db_url
from defender_agent.detect.contract import ProfileView
from defender_agent.errors import AgentError, ConfigError
from defender_agent.service.storage import (
    Migration,
    PostgresStore,
    SQLiteStore,
    Store,
    _Cursor,
)

__all__ = [
    "MAX_PROFILES_PER_TARGET",
    "REGISTRY_MIGRATIONS",
    "MemberCheck",
    "PostgresRegistry",
    "RegistryError",
    "SQLiteRegistry",
    "SqlRegistry",
    "open_registry",
]

#: AWS's quota of security profiles attached to one target.
MAX_PROFILES_PER_TARGET: Final = 5

NOT_FOUND: Final = "ResourceNotFoundException"
EXISTS: Final = "ResourceAlreadyExistsException"
CONFLICT: Final = "VersionConflictException"
INVALID: Final = "InvalidRequestException"
LIMIT: Final = "LimitExceededException"

REGISTRY_MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "Detect registry: security profiles, custom metrics, thing groups, attachments",
        (
            """CREATE TABLE security_profiles (
                name TEXT PRIMARY KEY,
                arn TEXT NOT NULL,
                version BIGINT NOT NULL,
                doc TEXT NOT NULL,
                created DOUBLE PRECISION NOT NULL,
                modified DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE custom_metrics (
                name TEXT PRIMARY KEY,
                arn TEXT NOT NULL,
                metric_type TEXT NOT NULL,
                display_name TEXT,
                created DOUBLE PRECISION NOT NULL,
                modified DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE thing_groups (
                name TEXT PRIMARY KEY,
                arn TEXT NOT NULL,
                id TEXT NOT NULL,
                version BIGINT NOT NULL,
                properties TEXT NOT NULL,
                created DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE thing_group_members (
                group_name TEXT NOT NULL REFERENCES thing_groups (name),
                thing_name TEXT NOT NULL,
                PRIMARY KEY (group_name, thing_name)
            )""",
            "CREATE INDEX thing_group_members_thing ON thing_group_members (thing_name)",
            """CREATE TABLE profile_targets (
                profile TEXT NOT NULL REFERENCES security_profiles (name),
                target TEXT NOT NULL,
                PRIMARY KEY (profile, target)
            )""",
            "CREATE INDEX profile_targets_target ON profile_targets (target)",
            "CREATE TABLE registry_generation (id INTEGER PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO registry_generation (id, value) VALUES (1, 0)",
        ),
    ),
    Migration(
        2,
        "CreateCustomMetric's clientRequestToken (a retried create answers as the first did)",
        ("ALTER TABLE custom_metrics ADD COLUMN client_token TEXT",),
    ),
)

#: The members of a profile kept in its JSON document.
PROFILE_MEMBERS: Final = (
    "securityProfileDescription",
    "behaviors",
    "alertTargets",
    "additionalMetricsToRetain",
    "additionalMetricsToRetainV2",
    "metricsExportConfig",
)


#: Checks a profile's members against the custom metrics (name -> ``metricType``) read
#: in the same transaction as the write; returns the problems (none: the write goes on).
MemberCheck = Callable[[Mapping[str, str]], Sequence[str]]


class RegistryError(AgentError):
    """A request the registry refuses; ``code`` is AWS's exception name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_token(key: str) -> str:
    """An opaque ``nextToken`` for "after this key".

    >>> decode_token(encode_token("p-7"))
    'p-7'
    """
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: Optional[str]) -> str:
    """The key of a ``nextToken`` ("" for none); a bad token is InvalidRequestException."""
    if not token:
        return ""
    try:
        key = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (ValueError, UnicodeError):
        key = None
    if not key or encode_token(key) != token:
        raise RegistryError(INVALID, "nextToken is not a token this service issued")
    return key


def _page(keys: Sequence[Any], limit: int, key_of: Any) -> tuple[list[Any], Optional[str]]:  # noqa: ANN401
    if len(keys) > limit:
        return list(keys[:limit]), encode_token(key_of(keys[limit - 1]))
    return list(keys), None


class SqlRegistry(Store):
    """The registry's operations.

    They use a :class:`~defender_agent.service.storage.Store`'s connection, lock and
    migrations (mixed into the SQLite and PostgreSQL classes).
    """

    _VERSION_TABLE = "detect_registry_schema"
    region: str
    account: str

    # ------------------------------------------------------------------ helpers
    def arn(self, resource: str) -> str:
        """``arn:aws:iot:REGION:ACCOUNT:RESOURCE``."""
        return f"arn:aws:iot:{self.region}:{self.account}:{resource}"

    @contextmanager
    def _change(self) -> Iterator[_Cursor]:
        """A write transaction that first adds 1 to the generation.

        That update also locks the generation's row (PostgreSQL) for the rest of the
        transaction, so the registry's changes are serialised across processes: a check
        (does it exist? which version?) and the write that follows cannot interleave with
        another process's. SQLite's ``BEGIN IMMEDIATE`` does the same. Changes are rare.
        """
        with self._guard(), self._write() as cur:
            cur.execute("UPDATE registry_generation SET value = value + 1 WHERE id = 1", ())
            yield cur

    @staticmethod
    def _run_check(cur: _Cursor, check: Optional[MemberCheck]) -> None:
        """``check`` against the custom metrics as this transaction sees them.

        Inside the change's transaction a ``DeleteCustomMetric`` cannot come between the
        check and the write: it waits, then finds the metric in use.
        """
        if check is None:
            return
        cur.execute("SELECT name, metric_type FROM custom_metrics", ())
        problems = check({str(n): str(t) for n, t in cur.fetchall()})
        if problems:
            raise RegistryError(INVALID, "; ".join(problems[:10]))

    def _profile_row(self, cur: _Cursor, name: str) -> tuple[Any, ...]:
        cur.execute(
            "SELECT name, arn, version, doc, created, modified FROM security_profiles"
            " WHERE name = ?",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            raise RegistryError(NOT_FOUND, f"Security profile {name} does not exist")
        return tuple(row)

    @staticmethod
    def _profile_doc(row: Sequence[Any]) -> dict[str, Any]:
        name, arn, version, doc, created, modified = row
        out: dict[str, Any] = {"securityProfileName": name, "securityProfileArn": arn}
        out.update(json.loads(doc))
        out.update(version=int(version), creationDate=created, lastModifiedDate=modified)
        return out

    # ------------------------------------------------------------------ contract.Registry
    def generation(self) -> int:
        """The counter every change adds 1 to."""
        with self._guard(), self._read() as cur:
            cur.execute("SELECT value FROM registry_generation WHERE id = 1", ())
            return int(cur.fetchone()[0])

    def profiles(self) -> list[ProfileView]:
        """Every security profile with its targets, by name."""
        with self._guard(), self._read() as cur:
            cur.execute("SELECT name, arn, version, doc FROM security_profiles ORDER BY name", ())
            rows = cur.fetchall()
            cur.execute("SELECT profile, target FROM profile_targets ORDER BY profile, target", ())
            links = cur.fetchall()
        targets: dict[str, list[str]] = {}
        for profile, target in links:
            targets.setdefault(str(profile), []).append(str(target))
        views = []
        for name, arn, version, doc in rows:
            members = json.loads(doc)
            views.append(
                ProfileView(
                    name=str(name),
                    arn=str(arn),
                    version=int(version),
                    behaviors=tuple(members.get("behaviors") or ()),
                    alert_targets=dict(members.get("alertTargets") or {}),
                    targets=tuple(targets.get(str(name), ())),
                )
            )
        return views

    def custom_metric_types(self) -> dict[str, str]:
        """Custom metric name -> ``metricType``."""
        with self._guard(), self._read() as cur:
            cur.execute("SELECT name, metric_type FROM custom_metrics", ())
            return {str(n): str(t) for n, t in cur.fetchall()}

    def groups_of(self, thing_name: str) -> frozenset[str]:
        """The thing groups ``thing_name`` is in."""
        with self._guard(), self._read() as cur:
            cur.execute(
                "SELECT group_name FROM thing_group_members WHERE thing_name = ?", (thing_name,)
            )
            return frozenset(str(row[0]) for row in cur.fetchall())

    # ------------------------------------------------------------------ security profiles
    def create_profile(
        self,
        name: str,
        members: Mapping[str, Any],
        *,
        now: float,
        check: Optional[MemberCheck] = None,
    ) -> dict[str, Any]:
        """A new profile (version 1) of the given AWS members; returns name and ARN.

        ``check`` (the API's behavior rules) runs inside the write's transaction.
        """
        doc = json.dumps({k: members[k] for k in PROFILE_MEMBERS if members.get(k) is not None})
        arn = self.arn(f"securityprofile/{name}")
        with self._change() as cur:
            self._run_check(cur, check)
            cur.execute("SELECT 1 FROM security_profiles WHERE name = ?", (name,))
            if cur.fetchone() is not None:
                raise RegistryError(EXISTS, f"Security profile {name} already exists")
            cur.execute(
                "INSERT INTO security_profiles (name, arn, version, doc, created, modified)"
                " VALUES (?, ?, 1, ?, ?, ?)",
                (name, arn, doc, now, now),
            )
        return {"securityProfileName": name, "securityProfileArn": arn}

    def describe_profile(self, name: str) -> dict[str, Any]:
        """The profile's members, ``version``, ``creationDate``, ``lastModifiedDate``."""
        with self._guard(), self._read() as cur:
            return self._profile_doc(self._profile_row(cur, name))

    def update_profile(
        self,
        name: str,
        changes: Mapping[str, Any],
        *,
        expected_version: Optional[int],
        now: float,
        check: Optional[MemberCheck] = None,
    ) -> dict[str, Any]:
        """Set (a value) or remove (None) members; +1 version; the profile after it.

        ``check`` (the API's behavior rules) runs inside the write's transaction.

        Raises:
            RegistryError: no such profile; ``expected_version`` is not its version.
        """
        with self._change() as cur:
            self._run_check(cur, check)
            row = self._profile_row(cur, name)
            version = int(row[2])
            if expected_version is not None and expected_version != version:
                raise RegistryError(
                    CONFLICT,
                    f"Security profile {name} is at version {version}, "
                    f"not the expected {expected_version}",
                )
            doc = json.loads(row[3])
            for key, value in changes.items():
                if value is None:
                    doc.pop(key, None)
                else:
                    doc[key] = value
            cur.execute(
                "UPDATE security_profiles SET version = ?, doc = ?, modified = ? WHERE name = ?",
                (version + 1, json.dumps(doc), now, name),
            )
            return self._profile_doc(self._profile_row(cur, name))

    def delete_profile(self, name: str, *, expected_version: Optional[int]) -> None:
        """Delete a profile and its attachments (a missing one is not an error, as AWS)."""
        with self._change() as cur:
            cur.execute("SELECT version FROM security_profiles WHERE name = ?", (name,))
            row = cur.fetchone()
            if row is None:
                return
            if expected_version is not None and expected_version != int(row[0]):
                raise RegistryError(
                    CONFLICT,
                    f"Security profile {name} is at version {int(row[0])}, "
                    f"not the expected {expected_version}",
                )
            cur.execute("DELETE FROM profile_targets WHERE profile = ?", (name,))
            cur.execute("DELETE FROM security_profiles WHERE name = ?", (name,))

    def list_profiles(
        self,
        *,
        limit: int,
        token: Optional[str],
        metric_name: Optional[str] = None,
        dimension_name: Optional[str] = None,
    ) -> tuple[list[dict[str, str]], Optional[str]]:
        """``securityProfileIdentifiers`` by name.

        With ``metric_name``/``dimension_name``: only the profiles using that metric (in a
        behavior or in the metrics to retain) or dimension.
        """
        after = decode_token(token)
        with self._guard(), self._read() as cur:
            cur.execute(
                "SELECT name, arn, doc FROM security_profiles WHERE name > ? ORDER BY name",
                (after,),
            )
            rows = cur.fetchall()
        found = [
            (str(n), str(a))
            for n, a, doc in rows
            if _uses(json.loads(doc), metric_name, dimension_name)
        ]
        items, next_token = _page(found, limit, lambda item: item[0])
        return [{"name": n, "arn": a} for n, a in items], next_token

    def profiles_using_metric(self, metric: str) -> list[str]:
        """The profiles whose behaviors or retained metrics name ``metric``."""
        with self._guard(), self._read() as cur:
            cur.execute("SELECT name, doc FROM security_profiles ORDER BY name", ())
            rows = cur.fetchall()
        return [str(n) for n, doc in rows if _uses(json.loads(doc), metric, None)]

    # ------------------------------------------------------------------ attachments
    def _check_target(self, cur: _Cursor, target: str) -> None:
        prefix = self.arn("")
        rest = target[len(prefix) :] if target.startswith(prefix) else None
        if rest in ("all/things", "all/registered-things"):
            return
        if rest is not None and rest.startswith("thinggroup/"):
            group = rest[len("thinggroup/") :]
            cur.execute("SELECT 1 FROM thing_groups WHERE name = ?", (group,))
            if cur.fetchone() is None:
                raise RegistryError(NOT_FOUND, f"Thing group {group} does not exist")
            return
        raise RegistryError(
            INVALID,
            f"securityProfileTargetArn {target} is not {prefix}all/things, "
            f"{prefix}all/registered-things or {prefix}thinggroup/NAME",
        )

    def attach(self, profile: str, target: str) -> None:
        """Attach a profile to a target (again: no change)."""
        with self._change() as cur:
            self._profile_row(cur, profile)
            self._check_target(cur, target)
            cur.execute(
                "SELECT 1 FROM profile_targets WHERE profile = ? AND target = ?", (profile, target)
            )
            if cur.fetchone() is not None:
                return
            cur.execute("SELECT COUNT(*) FROM profile_targets WHERE target = ?", (target,))
            if int(cur.fetchone()[0]) >= MAX_PROFILES_PER_TARGET:
                raise RegistryError(
                    LIMIT,
                    f"{target} already has {MAX_PROFILES_PER_TARGET} security profiles attached",
                )
            cur.execute(
                "INSERT INTO profile_targets (profile, target) VALUES (?, ?)", (profile, target)
            )

    def detach(self, profile: str, target: str) -> None:
        """Detach a profile from a target."""
        with self._change() as cur:
            self._profile_row(cur, profile)
            cur.execute(
                "DELETE FROM profile_targets WHERE profile = ? AND target = ?", (profile, target)
            )

    def targets_of(
        self, profile: str, *, limit: int, token: Optional[str]
    ) -> tuple[list[str], Optional[str]]:
        """The target ARNs a profile is attached to."""
        after = decode_token(token)
        with self._guard(), self._read() as cur:
            self._profile_row(cur, profile)
            cur.execute(
                "SELECT target FROM profile_targets WHERE profile = ? AND target > ?"
                " ORDER BY target LIMIT ?",
                (profile, after, limit + 1),
            )
            rows = [str(r[0]) for r in cur.fetchall()]
        return _page(rows, limit, lambda t: t)

    def profiles_for_target(
        self, target: str, *, recursive: bool, limit: int, token: Optional[str]
    ) -> tuple[list[tuple[str, str, str]], Optional[str]]:
        """``(profile, profile ARN, target)`` attached to ``target``, by profile, target.

        ``recursive``: also those attached to the groups above it.
        """
        targets = [target]
        if recursive:
            targets.extend(self._ancestors(target))
        after = decode_token(token)
        marks = ", ".join("?" for _ in targets)
        sql = (
            "SELECT t.profile, p.arn, t.target FROM profile_targets t"  # noqa: S608 - "?" placeholders only
            " JOIN security_profiles p ON p.name = t.profile"
            f" WHERE t.target IN ({marks}) ORDER BY t.profile, t.target"
        )
        with self._guard(), self._read() as cur:
            cur.execute(
                sql,
                targets,
            )
            rows = [(str(a), str(b), str(c)) for a, b, c in cur.fetchall()]
        rows = [r for r in rows if f"{r[0]}\n{r[2]}" > after]
        return _page(rows, limit, lambda r: f"{r[0]}\n{r[2]}")

    def _ancestors(self, target: str) -> list[str]:
        prefix = self.arn("thinggroup/")
        if not target.startswith(prefix):
            return []
        out: list[str] = []
        name: Optional[str] = target[len(prefix) :]
        seen: set[str] = set()
        with self._guard(), self._read() as cur:
            while name and name not in seen:
                seen.add(name)
                cur.execute("SELECT properties FROM thing_groups WHERE name = ?", (name,))
                row = cur.fetchone()
                name = json.loads(row[0]).get("parentGroupName") if row else None
                if name:
                    out.append(prefix + name)
        return out

    # ------------------------------------------------------------------ custom metrics
    def create_custom_metric(
        self,
        name: str,
        metric_type: str,
        display_name: Optional[str],
        *,
        now: float,
        client_token: Optional[str] = None,
    ) -> dict[str, str]:
        """A new custom metric; returns ``metricName`` and ``metricArn``.

        The same ``client_token`` again (a client's retry) gets the same answer, as AWS's
        ``clientRequestToken``; another create of an existing name is refused.
        """
        arn = self.arn(f"custommetric/{name}")
        with self._change() as cur:
            cur.execute(
                "SELECT metric_type, client_token FROM custom_metrics WHERE name = ?", (name,)
            )
            row = cur.fetchone()
            if row is not None:
                if client_token and row[1] == client_token and row[0] == metric_type:
                    return {"metricName": name, "metricArn": arn}
                raise RegistryError(EXISTS, f"Custom metric {name} already exists")
            cur.execute(
                "INSERT INTO custom_metrics"
                " (name, arn, metric_type, display_name, created, modified, client_token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, arn, metric_type, display_name, now, now, client_token),
            )
        return {"metricName": name, "metricArn": arn}

    def describe_custom_metric(self, name: str) -> dict[str, Any]:
        """``metricName``, ``metricArn``, ``metricType``, ``displayName``, dates."""
        with self._guard(), self._read() as cur:
            return self._metric(cur, name)

    def _metric(self, cur: _Cursor, name: str) -> dict[str, Any]:
        cur.execute(
            "SELECT arn, metric_type, display_name, created, modified FROM custom_metrics"
            " WHERE name = ?",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            raise RegistryError(NOT_FOUND, f"Custom metric {name} does not exist")
        arn, metric_type, display, created, modified = row
        out = {"metricName": name, "metricArn": arn, "metricType": metric_type}
        if display is not None:
            out["displayName"] = display
        return {**out, "creationDate": created, "lastModifiedDate": modified}

    def update_custom_metric(self, name: str, display_name: str, *, now: float) -> dict[str, Any]:
        """Set a custom metric's display name (its type cannot change, as on AWS)."""
        with self._change() as cur:
            self._metric(cur, name)
            cur.execute(
                "UPDATE custom_metrics SET display_name = ?, modified = ? WHERE name = ?",
                (display_name, now, name),
            )
            return self._metric(cur, name)

    def delete_custom_metric(self, name: str) -> None:
        """Delete a custom metric no profile uses (AWS asks the same; missing: no error)."""
        with self._change() as cur:
            cur.execute("SELECT name, doc FROM security_profiles ORDER BY name", ())
            using = [str(n) for n, doc in cur.fetchall() if _uses(json.loads(doc), name, None)]
            if using:
                raise RegistryError(
                    INVALID,
                    f"Custom metric {name} is used by security profile(s) {', '.join(using)}: "
                    "remove it from them first",
                )
            cur.execute("DELETE FROM custom_metrics WHERE name = ?", (name,))

    def list_custom_metrics(
        self, *, limit: int, token: Optional[str]
    ) -> tuple[list[str], Optional[str]]:
        """``metricNames`` by name."""
        after = decode_token(token)
        with self._guard(), self._read() as cur:
            cur.execute(
                "SELECT name FROM custom_metrics WHERE name > ? ORDER BY name LIMIT ?",
                (after, limit + 1),
            )
            names = [str(r[0]) for r in cur.fetchall()]
        return _page(names, limit, lambda n: n)

    # ------------------------------------------------------------------ thing groups
    def create_group(
        self, name: str, parent: Optional[str], properties: Mapping[str, Any], *, now: float
    ) -> dict[str, str]:
        """A new thing group; returns ``thingGroupName``, ``thingGroupArn``, ``thingGroupId``.

        Creating an existing group with the same parent and properties returns it (AWS).
        """
        arn = self.arn(f"thinggroup/{name}")
        props = dict(properties)
        if parent:
            props["parentGroupName"] = parent
        with self._change() as cur:
            cur.execute("SELECT id, properties FROM thing_groups WHERE name = ?", (name,))
            row = cur.fetchone()
            if row is not None:
                if json.loads(row[1]) == props:
                    return {"thingGroupName": name, "thingGroupArn": arn, "thingGroupId": row[0]}
                raise RegistryError(
                    EXISTS, f"Thing group {name} already exists with different properties"
                )
            if parent:
                cur.execute("SELECT 1 FROM thing_groups WHERE name = ?", (parent,))
                if cur.fetchone() is None:
                    raise RegistryError(NOT_FOUND, f"Thing group {parent} does not exist")
            group_id = str(uuid.uuid4())
            cur.execute(
                "INSERT INTO thing_groups (name, arn, id, version, properties, created)"
                " VALUES (?, ?, ?, 1, ?, ?)",
                (name, arn, group_id, json.dumps(props), now),
            )
        return {"thingGroupName": name, "thingGroupArn": arn, "thingGroupId": group_id}

    def describe_group(self, name: str) -> dict[str, Any]:
        """The group in ``DescribeThingGroup``'s shape."""
        with self._guard(), self._read() as cur:
            cur.execute(
                "SELECT arn, id, version, properties, created FROM thing_groups WHERE name = ?",
                (name,),
            )
            row = cur.fetchone()
        if row is None:
            raise RegistryError(NOT_FOUND, f"Thing group {name} does not exist")
        arn, group_id, version, properties, created = row
        props = json.loads(properties)
        parent = props.pop("parentGroupName", None)
        meta: dict[str, Any] = {"creationDate": created}
        if parent:
            meta["parentGroupName"] = parent
        return {
            "thingGroupName": name,
            "thingGroupId": group_id,
            "thingGroupArn": arn,
            "version": int(version),
            "thingGroupProperties": props,
            "thingGroupMetadata": meta,
            "status": "ACTIVE",
        }

    def delete_group(self, name: str, *, expected_version: Optional[int] = None) -> None:
        """Delete a group, its memberships and the attachments to it (missing: no error)."""
        with self._change() as cur:
            cur.execute("SELECT version FROM thing_groups WHERE name = ?", (name,))
            row = cur.fetchone()
            if row is not None and expected_version not in (None, int(row[0])):
                raise RegistryError(
                    CONFLICT,
                    f"Thing group {name} is at version {int(row[0])}, "
                    f"not the expected {expected_version}",
                )
            cur.execute("SELECT properties FROM thing_groups", ())
            for (props,) in cur.fetchall():
                if json.loads(props).get("parentGroupName") == name:
                    raise RegistryError(
                        INVALID, f"Thing group {name} has child groups: delete them first"
                    )
            cur.execute("DELETE FROM thing_group_members WHERE group_name = ?", (name,))
            cur.execute(
                "DELETE FROM profile_targets WHERE target = ?", (self.arn(f"thinggroup/{name}"),)
            )
            cur.execute("DELETE FROM thing_groups WHERE name = ?", (name,))

    def list_groups(
        self,
        *,
        limit: int,
        token: Optional[str],
        parent: Optional[str] = None,
        prefix: Optional[str] = None,
        recursive: bool = True,
    ) -> tuple[list[dict[str, str]], Optional[str]]:
        """``thingGroups`` (``groupName``, ``groupArn``) by name."""
        after = decode_token(token)
        with self._guard(), self._read() as cur:
            # every group: a later page's group may descend through an earlier page's
            cur.execute("SELECT name, arn, properties FROM thing_groups ORDER BY name", ())
            every = [(str(n), str(a), json.loads(p)) for n, a, p in cur.fetchall()]
        rows = [r for r in every if r[0] > after]
        if parent is not None:
            rows = [r for r in rows if _below(r[0], parent, every, recursive)]
        if prefix:
            rows = [r for r in rows if r[0].startswith(prefix)]
        items, next_token = _page(rows, limit, lambda r: r[0])
        return [{"groupName": n, "groupArn": a} for n, a, _p in items], next_token

    def add_to_group(self, group: str, thing: str) -> None:
        """Add a thing to a group (again: no change)."""
        with self._change() as cur:
            self._group_exists(cur, group)
            cur.execute(
                "SELECT 1 FROM thing_group_members WHERE group_name = ? AND thing_name = ?",
                (group, thing),
            )
            if cur.fetchone() is None:
                cur.execute(
                    "INSERT INTO thing_group_members (group_name, thing_name) VALUES (?, ?)",
                    (group, thing),
                )

    def remove_from_group(self, group: str, thing: str) -> None:
        """Remove a thing from a group."""
        with self._change() as cur:
            self._group_exists(cur, group)
            cur.execute(
                "DELETE FROM thing_group_members WHERE group_name = ? AND thing_name = ?",
                (group, thing),
            )

    def things_in_group(
        self, group: str, *, limit: int, token: Optional[str]
    ) -> tuple[list[str], Optional[str]]:
        """The thing names in a group, by name."""
        after = decode_token(token)
        with self._guard(), self._read() as cur:
            self._group_exists(cur, group)
            cur.execute(
                "SELECT thing_name FROM thing_group_members WHERE group_name = ?"
                " AND thing_name > ? ORDER BY thing_name LIMIT ?",
                (group, after, limit + 1),
            )
            names = [str(r[0]) for r in cur.fetchall()]
        return _page(names, limit, lambda n: n)

    def _group_exists(self, cur: _Cursor, group: str) -> None:
        cur.execute("SELECT 1 FROM thing_groups WHERE name = ?", (group,))
        if cur.fetchone() is None:
            raise RegistryError(NOT_FOUND, f"Thing group {group} does not exist")


def _below(
    name: str, parent: str, rows: Iterable[tuple[str, str, dict[str, Any]]], recursive: bool
) -> bool:
    parents = {n: p.get("parentGroupName") for n, _a, p in rows}
    up = parents.get(name)
    seen: set[str] = set()
    while up and up not in seen:
        if up == parent:
            return True
        if not recursive:
            return False
        seen.add(up)
        up = parents.get(up)
    return False


def _uses(doc: Mapping[str, Any], metric: Optional[str], dimension: Optional[str]) -> bool:
    """Whether a profile names ``metric`` (and ``dimension``); both None: every profile.

    Behaviors and the metrics to retain count.

    >>> _uses({"behaviors": [{"name": "b", "metric": "aws:num-messages-sent"}]},
    ...       "aws:num-messages-sent", None)
    True
    >>> _uses({"additionalMetricsToRetain": ["aws:all-bytes-out"]}, "aws:num-ports", None)
    False
    """
    if metric is None and dimension is None:
        return True
    entries: list[Mapping[str, Any]] = [
        *(doc.get("behaviors") or ()),
        *(doc.get("additionalMetricsToRetainV2") or ()),
    ]
    entries += [{"metric": m} for m in doc.get("additionalMetricsToRetain") or ()]
    for entry in entries:
        dim = (entry.get("metricDimension") or {}).get("dimensionName")
        if metric is not None and entry.get("metric") != metric:
            continue
        if dimension is not None and dim != dimension:
            continue
        return True
    return False


class SQLiteRegistry(SqlRegistry, SQLiteStore):
    """The registry in the service's SQLite file."""


class PostgresRegistry(SqlRegistry, PostgresStore):
    """The registry in the service's PostgreSQL database."""


def open_registry(url: str, *, region: str, account: str) -> SqlRegistry:
    """Open (and migrate) the registry in the database ``url`` names (as ``open_store``).

    Raises:
        ConfigError: Not a database URL this service takes.
        StateError: The database cannot be opened or has a newer registry schema.
    """
    registry: SqlRegistry
    if url.startswith(("postgresql://", "postgres://")) or is_keyword_string(url):
        registry = PostgresRegistry(url, migrations=REGISTRY_MIGRATIONS)
    else:
        path = url[len("sqlite://") :] if url.startswith("sqlite://") else url
        if "://" in path or not path:
            raise ConfigError(
                f"unsupported database URL for the Detect registry: {mask_db_url(url)}"
            )
        registry = SQLiteRegistry(path, migrations=REGISTRY_MIGRATIONS)
    registry.region, registry.account = region, account
    return registry


def now() -> float:
    """The time the registry stamps (epoch seconds)."""
    return time.time()
