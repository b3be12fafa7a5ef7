"""The postgresql:// state backend against a real PostgreSQL server: the StateStore
contract, plus its schema, session-bound locks and what it never shows (the password)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from reconciler.state import open_state, testing


@pytest.fixture
def factory(tmp_path: Path, postgres_url: str) -> testing.StoreFactory:
    return partial(open_state, postgres_url, repo_root=tmp_path)


@pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
def test_contract(check: testing.Check, factory: testing.StoreFactory) -> None:
    check(factory)
