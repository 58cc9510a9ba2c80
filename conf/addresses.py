"""Addresses in settings (``kafka.bootstrap_servers``, ``aerospike.hosts``) split into host and port."""

from __future__ import annotations


def split_hostport(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9092"`` for IPv6) -> (host, port); ``"host"`` -> default_port."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        if default_port is None:
            raise ValueError(f"address {address!r} has no port")
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)
