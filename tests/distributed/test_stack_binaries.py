"""The distributed tests skip on a developer machine without PostgreSQL/Redis, and fail in CI instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed import conftest
from tests.distributed.stack import Binaries, find_binaries


def test_missing_binaries_name_the_debian_packages() -> None:
    assert Binaries(None, None).missing() == ["postgresql", "redis-server"]
    assert Binaries(Path("/usr/lib/postgresql/15/bin"), None).missing() == ["redis-server"]


def test_overrides_pointing_nowhere_count_as_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROPLABEL_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PROPLABEL_REDIS_SERVER", str(tmp_path / "redis-server"))
    assert find_binaries().missing() == ["postgresql", "redis-server"]


def test_without_binaries_a_developer_machine_skips_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conftest, "find_binaries", lambda: Binaries(None, Path("/usr/bin/redis-server")))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        conftest.require_binaries()


def test_without_binaries_ci_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "find_binaries", lambda: Binaries(Path("/pg"), None))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and Debian packages redis-server"):
        conftest.require_binaries()
