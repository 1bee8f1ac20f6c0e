"""Transports: how reports reach AWS IoT Core (or a compatible broker) and how replies come back."""
