"""The local Device Defender-compatible service: ingest, storage and queries of metrics reports."""
