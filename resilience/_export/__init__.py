"""Exporters: the Prometheus collector and breaker state shared on Redis."""
