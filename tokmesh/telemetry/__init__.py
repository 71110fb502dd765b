"""Observability: JSON-lines logging with redaction, Prometheus metrics, the audit log.

* :mod:`tokmesh.telemetry.redact`: the redaction rules of 02 §17.
* :mod:`tokmesh.telemetry.logging`: ``setup_logging`` / ``set_level`` / ``log_context``.
* :mod:`tokmesh.telemetry.metrics`: every metric of 04 §16 and ``render()`` for /metrics.
* :mod:`tokmesh.telemetry.audit`: ``AuditRecord`` and the asynchronous ``AuditLog``.
"""
