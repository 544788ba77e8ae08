"""
The daemon's base URL derived from its C{[http] listen} endpoint string,
for clients on the same host such as C{raps watch}.
"""

from __future__ import annotations

import ipaddress

# The URL used when the listen address gives no loopback URL: another
# interface, a UNIX socket, or a port the system picks.
FALLBACK_URL = "http://127.0.0.1:8888"

# Wildcard addresses listen on loopback too; each maps to the loopback
# address of its family.
_WILDCARD_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a Twisted endpoint string into its positional and keyword
    arguments, the endpoint type first, undoing backslash escapes as
    Twisted does (C{tcp6:8888:interface=\\:\\:1}).
    """
    parts: list[str] = []
    current: list[str] = []
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current.append(next(characters, ""))
        elif character == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))

    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts:
        name, separator, value = part.partition("=")
        if separator:
            keywords[name] = value
        else:
            positional.append(part)
    return positional, keywords


def daemon_base_url(listen: str) -> str:
    """
    Return the base URL of a daemon that listens on C{listen}.

    A TCP endpoint on a loopback address gives that address and port, and
    one on a wildcard address (none, C{0.0.0.0} or C{::}) the loopback
    address of its family. Anything else gives L{FALLBACK_URL}.
    """
    positional, keywords = split_endpoint(listen)
    if not positional or positional[0] not in ("tcp", "tcp6"):
        return FALLBACK_URL
    port_text = keywords.get("port", positional[1] if len(positional) > 1 else "")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) == 0:
        return FALLBACK_URL
    default_interface = "::" if positional[0] == "tcp6" else "0.0.0.0"
    interface = keywords.get("interface", default_interface)
    interface = _WILDCARD_LOOPBACK.get(interface, interface)
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return FALLBACK_URL
    if not address.is_loopback:
        return FALLBACK_URL
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{int(port_text)}"
