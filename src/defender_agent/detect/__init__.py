"""Detect: security profiles evaluated against the reports the local service accepts.

The parts, each with one job:

* :mod:`.contract` - the seam between the control plane (the AWS IoT REST API in
  :mod:`defender_agent.service.api` and its registry of profiles, custom metrics and
  thing groups) and the engine (evaluation, violations, alerts).
* :mod:`.behaviors` - AWS's validation rules for ``behaviors`` and their typed form.
* :mod:`.metrics` - a report's datapoint for a metric, and the ``MetricValue`` JSON of one.
* :mod:`.evaluate` - one datapoint against one behavior: the exact evaluation model.
* :mod:`.statistics` - percentiles for statistical thresholds.
* :mod:`.ml` - the local ML Detect model (a per-device baseline; not AWS's model).
* :mod:`.describe` - behaviors in words.
"""
