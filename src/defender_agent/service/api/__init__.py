"""The AWS IoT control-plane REST API for Detect (``aws iot ... --endpoint-url``).

:mod:`.protocol` maps botocore's IoT model (restJson1) to routes and (de)serialises
requests and responses; :mod:`.sigv4` verifies signatures; :mod:`.errors` is AWS's error
shape; :mod:`.handlers` implements the operations over the registry and violations.
"""
