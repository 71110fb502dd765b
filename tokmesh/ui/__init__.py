"""The operations dashboard: static files served at ``/ui`` (see ``docs/dashboard.md``)."""
