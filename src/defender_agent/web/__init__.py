"""The service's web dashboard and Prometheus ``/metrics`` (an installer of its HTTP server)."""
