"""open_services: a storage failure at start becomes one readable line with a hint of what to do."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import core.services as services_module
from config.settings import Settings
from core.services import StorageUnavailable, open_services


def failing_build(error: Exception):  # noqa: ANN201
    def build(settings: Settings, **_kwargs: object) -> None:
        raise error

    return build


@pytest.mark.parametrize(("error", "hint"), [
    (OSError(errno.EFBIG, "File too large"), "(free some disk space or raise the file-size limit)"),
    (OSError(errno.ENOSPC, "No space left on device"), "(free some disk space)"),
    (OSError(errno.EROFS, "Read-only file system"), "(DATA_DIR must be writable)"),
])
async def test_a_storage_failure_at_start_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    error: OSError, hint: str) -> None:
    monkeypatch.setattr(services_module, "build_services", failing_build(error))
    with pytest.raises(StorageUnavailable) as caught:
        await open_services(Settings(_env_file=None, data_dir=tmp_path / "data"))
    assert str(caught.value) == f"cannot use DATA_DIR={tmp_path / 'data'}: {error.strerror} {hint}"
