"""Report model, naming, encoding and validation of Device Defender metrics reports."""
