"""Redis-compatible front end: RESP2, and RESP3 after ``HELLO 3``.

``codec`` (sans-IO request parser, RESP2 reply encoders), ``replies`` (replies in the
connection's protocol, RESP2 or RESP3), ``limits`` (framing limits, timeouts), ``deps``
(the protocols the command layer needs), ``connection`` (per-connection protocol state,
the registry of open connections, counters), ``table`` (command table entries),
``commands`` (the dispatcher's pipeline and the session commands), ``server_commands``
(PING, AUTH, HELLO, CLIENT, SELECT, ECHO, RESET, COMMAND, INFO), ``command_docs`` (what
COMMAND says about each command), ``info`` (INFO's text), ``handler`` (the
per-connection Trio loop, used for TLS), ``mux`` (one task for every plain connection),
``listener`` (accepting), ``backend`` (the real services behind the protocols).
"""
