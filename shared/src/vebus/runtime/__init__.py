"""Running a service: settings, NATS connection, health and metrics endpoints, telemetry,
graceful stop.
"""
