"""Redis-compatible RESP2 front end (03 §5).

``codec`` (sans-IO parser and reply encoders), ``limits`` (framing limits, timeouts),
``deps`` (the protocols the command layer needs), ``commands`` (command table and
per-command pipeline), ``handler`` (the Trio listener), ``backend`` (the real services
behind those protocols).
"""
