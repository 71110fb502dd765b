"""``tokmesh-cli``: the operator's command-line tool and REPL (spec 06).

Modules are imported lazily by :mod:`tokmesh.cli.main` so that ``--help`` and ``version``
start fast; heavy libraries (httpx, rich, prompt_toolkit, yaml) load inside commands only.
"""
