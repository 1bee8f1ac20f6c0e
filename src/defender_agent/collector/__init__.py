"""Only the public sample's spelling ``python -m defender_agent.collector`` (see ``__main__``).

The collection cycle is :mod:`defender_agent.cycle`; the per-source readers are
:mod:`defender_agent.readers`.
"""
