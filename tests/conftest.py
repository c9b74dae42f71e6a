"""Shared test fixtures: paths to the read-only shared assets and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
FASTESTDET_DIR = SHARED_DIR / "models" / "fastestdet"
ZOO_DIR = REPO_ROOT / "edgekit" / "zoo"


@pytest.fixture(scope="session")
def fastestdet_dir() -> Path:
    """../shared/models/fastestdet, or a clean skip when the shared folder is absent."""
    if not (FASTESTDET_DIR / "fastestdet_coco_352.pth").is_file():
        pytest.skip("../shared/models/fastestdet is not present")
    return FASTESTDET_DIR
