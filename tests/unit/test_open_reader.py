"""Choosing the online store's reader (``python_backend.fraud.online.open_reader``): a kind
it does not know, or a store that was never filled, is a clear error naming the fix."""

from __future__ import annotations

import pytest

from python_backend.fraud.online import open_reader


def test_unknown_store_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="FEATURE_STORE must be 'sqlite' or 'redis'"):
        open_reader("cassandra")
    with pytest.raises(FileNotFoundError, match="make features"):
        open_reader("sqlite", "/nonexistent/online.db")
