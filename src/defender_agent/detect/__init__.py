"""Detect: security profiles evaluated against the reports the local service accepts.

The parts, each with one job:

* :mod:`.contract` - the seam between the control plane (the AWS IoT REST API in
  :mod:`defender_agent.service.api` and its registry of profiles, custom metrics and
  thing groups) and the engine (evaluation, violations, alerts).
"""
