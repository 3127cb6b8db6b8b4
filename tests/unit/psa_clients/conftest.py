"""Fixtures the PSA client unit tests share."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def public_dns(monkeypatch):
    """Every host resolves to one public address, without touching the network."""

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("204.12.34.56", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
