"""CLI failures and their exit codes (06 §8).

Every failure a command can end with is a :class:`CliError`: a human message, an optional
catalogue code (a ``TM-*`` server code or a ``TM-CLI-*`` code), the process exit code and
the extra lines of the human display (06 §8.3). The catalogue itself lives in
:mod:`tokmesh.domain.errors`; it is imported lazily because it pulls in ``attrs``, which
would slow every start of the tool.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_GENERAL = 1
EXIT_INTERRUPT = 2
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78


class CliError(Exception):
    """A failure with everything the human and JSON error displays need.

    ``show_code`` is False for plain usage errors, whose human form is one or a few
    lines (06 §1, §5) while the JSON envelope still carries the code.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        exit_code: int = EXIT_GENERAL,
        details: Any = None,
        suggestion: str | None = None,
        request_id: str | None = None,
        extra_lines: list[str] | None = None,
        show_code: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code
        self.details = details
        self.suggestion = suggestion
        self.request_id = request_id
        self.extra_lines = extra_lines or []
        self.show_code = show_code


class Cancelled(Exception):
    """A declined confirmation (``Cancelled.``, exit 2) or a Ctrl+C-aborted command."""


def _catalogue(name: str) -> tuple[str, int]:
    """(code, exit status) of the ``E.<name>`` CLI entry of the error catalogue."""
    from tokmesh.domain.errors import E

    entry = getattr(E, name)
    return entry.code, entry.http_status


def usage_error(
    message: str, *, suggestion: str | None = None, extra_lines: list[str] | None = None
) -> CliError:
    """A usage error (``TM-CLI-1005``, exit 64) shown without its code."""
    code, exit_code = _catalogue("CLI_USAGE")
    return CliError(
        message,
        code=code,
        exit_code=exit_code,
        suggestion=suggestion,
        extra_lines=extra_lines,
        show_code=False,
    )


def arg_error(message: str) -> CliError:
    """A bad argument value (``TM-ARG-1001``) rejected client-side: exit 64."""
    from tokmesh.domain.errors import E

    return CliError(message, code=E.ARG_INVALID.code, exit_code=EXIT_USAGE)


def config_error(message: str, *, details: Any = None) -> CliError:
    """The CLI config file is missing at an explicit path or invalid (``TM-CLI-1001``, 78)."""
    code, exit_code = _catalogue("CLI_CONFIG")
    return CliError(message, code=code, exit_code=exit_code, details=details)


def unreachable_error(message: str, *, suggestion: str) -> CliError:
    """Connection refused, DNS failure, missing socket (``TM-CLI-1002``, 69)."""
    code, exit_code = _catalogue("CLI_UNREACHABLE")
    return CliError(message, code=code, exit_code=exit_code, suggestion=suggestion)


def tls_error(message: str) -> CliError:
    """TLS handshake or verification failure (``TM-CLI-1003``, 69)."""
    code, exit_code = _catalogue("CLI_TLS")
    return CliError(
        message,
        code=code,
        exit_code=exit_code,
        suggestion=(
            "If the server uses a private CA, pass --tls-ca <file> or set tls.ca_file "
            "for this target."
        ),
    )


def timeout_error(message: str) -> CliError:
    """A request ran past ``--timeout`` (``TM-CLI-1006``, 69)."""
    code, exit_code = _catalogue("CLI_TIMEOUT")
    return CliError(message, code=code, exit_code=exit_code)


def data_error(message: str) -> CliError:
    """Input data that is not what it must be (``--data`` not a JSON object): exit 65."""
    code, _ = _catalogue("CLI_USAGE")
    return CliError(message, code=code, exit_code=EXIT_DATA, show_code=False)


def serialize_error(message: str) -> CliError:
    """Output that cannot be serialised (``TM-CLI-1007``, 65)."""
    code, exit_code = _catalogue("CLI_SERIALIZE")
    return CliError(message, code=code, exit_code=exit_code)


def not_available_error(what: str) -> CliError:
    """A route the server does not have (404 ``TM-SYS-4040``), e.g. config or backup routes."""
    from tokmesh.domain.errors import E

    return CliError(
        f"'{what}' is not available on this server",
        code=E.SYS_NOT_FOUND.code,
        exit_code=EXIT_GENERAL,
        suggestion="Upgrade tokmesh-server to a version that provides this route.",
    )
