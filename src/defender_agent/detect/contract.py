"""The seam between Detect's control plane and its engine.

The control plane (the AWS IoT REST API of :mod:`defender_agent.service.api`) owns the
*registry*: security profiles, custom metrics, thing groups and attachments, in the
service's database. The engine (:mod:`defender_agent.detect`) reads the registry through
:class:`Registry`, evaluates every accepted report, and owns violations, their events and
the alerts; the API reads and updates violations through :class:`Violations`.

Both sides speak AWS's JSON shapes (the botocore IoT model's member names, camelCase):
a behavior is the ``Behavior`` structure as a dict, a violation the ``ActiveViolation`` or
``ViolationEvent`` structure. Times are POSIX seconds (floats); the API layer turns them
into the wire's timestamps.

Several service processes share one database: every method reads the database (or a
cache checked against :meth:`Registry.generation`), never only this process's memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

__all__ = ["Page", "ProfileView", "Registry", "ViolationFilter", "Violations"]


@dataclass(frozen=True)
class ProfileView:
    """One security profile as the engine needs it.

    Attributes:
        name: ``securityProfileName``.
        arn: ``arn:aws:iot:REGION:ACCOUNT:securityprofile/NAME``.
        version: Starts at 1, +1 on every update.
        behaviors: The ``behaviors`` list as stored (already validated), AWS's shape.
        alert_targets: ``alertTargets`` as stored (``{"SNS": {"alertTargetArn": ..,
            "roleArn": ..}}``).
        targets: The ARNs it is attached to: ``arn:aws:iot:R:A:all/things``,
            ``...:all/registered-things`` or ``...:thinggroup/NAME``.
    """

    name: str
    arn: str
    version: int
    behaviors: tuple[Mapping[str, Any], ...]
    alert_targets: Mapping[str, Mapping[str, str]]
    targets: tuple[str, ...]


class Registry(Protocol):
    """What the engine reads of the control plane."""

    def generation(self) -> int:
        """A number that changes whenever a profile, attachment, custom metric or group does."""

    def profiles(self) -> Sequence[ProfileView]:
        """Every security profile, attached or not."""

    def custom_metric_types(self) -> Mapping[str, str]:
        """Custom metric name -> ``metricType`` (``number``, ``number-list``, ...)."""

    def groups_of(self, thing_name: str) -> frozenset[str]:
        """The names of the thing groups the thing is in."""


@dataclass(frozen=True)
class ViolationFilter:
    """The filters shared by ``ListActiveViolations`` and ``ListViolationEvents``."""

    thing_name: Optional[str] = None
    security_profile_name: Optional[str] = None
    behavior_criteria_type: Optional[str] = None  # STATIC | STATISTICAL | MACHINE_LEARNING
    list_suppressed_alerts: Optional[bool] = None
    verification_state: Optional[str] = None


@dataclass(frozen=True)
class Page:
    """One page of a list: the items in AWS's shape and the token of the next page."""

    items: Sequence[Mapping[str, Any]]
    next_token: Optional[str]


class Violations(Protocol):
    """What the API reads and changes of the engine's violations."""

    def list_active(self, where: ViolationFilter, *, limit: int, token: Optional[str]) -> Page:
        """``activeViolations`` items (``ActiveViolation`` shape), oldest start first."""

    def list_events(
        self,
        where: ViolationFilter,
        *,
        start_time: float,
        end_time: float,
        limit: int,
        token: Optional[str],
    ) -> Page:
        """``violationEvents`` items (``ViolationEvent`` shape) in [start_time, end_time)."""

    def set_verification_state(
        self, violation_id: str, state: str, description: Optional[str]
    ) -> bool:
        """Set a violation's verification state; False when the id is unknown."""
