"""Small helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tokmesh.cli.errors import CliError, arg_error, usage_error

if TYPE_CHECKING:
    from tokmesh.cli.connection import Connection
    from tokmesh.cli.output import Printer
    from tokmesh.cli.state import CliState


def typed_id(value: str) -> str:
    """Typed ``tmss-``/``tmak-`` IDs are lower-cased (06 §4.3); others pass unchanged."""
    v = value.strip()
    if v[:5].lower() in ("tmss-", "tmak-"):
        return v.lower()
    return v


def where(conn: Connection) -> str | None:
    """The location-hint label: ``None`` (``[LOCAL]``) for socket targets."""
    return None if conn.endpoint.is_socket else conn.label


def emit(
    printer: Printer,
    data: Any,
    human: Callable[[], None],
    quiet: Callable[[], None] | None = None,
) -> None:
    """Structured envelope, quiet form, or the human form of a result."""
    if printer.structured:
        printer.envelope(data)
    elif printer.quiet:
        if quiet is not None:
            quiet()
    else:
        human()


def dry_run(state: CliState, printer: Printer, desc: str, own_flag: bool = False) -> bool:
    """With ``--dry-run``: print ``[DRY RUN] Would <desc>`` and tell the caller to stop."""
    if not (own_flag or state.flag("dry_run")):
        return False
    if printer.structured:
        printer.envelope({"dry_run": True, "action": desc})
    elif not printer.quiet:
        printer.out(f"[DRY RUN] Would {desc}")
    return True


def check_networks(text: str) -> list[str]:
    """A comma-separated IP/CIDR list, each entry validated (usage error 64)."""
    import ipaddress

    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise arg_error(f"invalid IP address or CIDR in --allowedlist: {item!r}") from None
    return items


def check_ip_or_cidr(text: str, flag: str) -> str:
    """One IP address or CIDR (usage error 64)."""
    import ipaddress

    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise arg_error(f"invalid IP address or CIDR for {flag}: {text!r}") from None
    return text.strip()


def duration_ms(text: str, flag: str) -> int:
    """A Go-style duration flag in ms (usage error 64)."""
    from tokmesh.cli.durations import parse_duration_ms

    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise usage_error(f"invalid {flag}: {exc}") from None


def rfc3339_flag(text: str, flag: str) -> str:
    """An RFC 3339 time flag, checked and passed through (usage error 64)."""
    from tokmesh.cli.durations import parse_rfc3339_ms

    try:
        parse_rfc3339_ms(text)
    except ValueError as exc:
        raise usage_error(f"invalid {flag}: {exc}") from None
    return text.strip()


def rename_not_found(exc: CliError, codes: tuple[str, ...], message: str) -> CliError:
    """The same error with a friendlier message when its code is one of ``codes``."""
    if exc.code in codes:
        exc.message = message
        exc.args = (message,)
    return exc
