"""Device Defender metrics reports: names, documents, encoding, size, validation, decoding.

``names`` (the long/short table), ``document`` (a Report to a document), ``serialize``
(JSON and CBOR), ``fit`` (under the size limit), ``validate`` (a payload checked against
the protocol), ``decode`` (a validated document back to a Report) and ``stream`` (a file
of reports cut into one payload per report).
"""
