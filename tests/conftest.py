from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from actors.config import load_pricing
from engine.ids import UserId
from engine.pricing import PricingConfig
from tests.http_support import WORKER_MODES

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def pricing() -> PricingConfig:
    return load_pricing()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def new_user() -> UserId:
    return UserId(uuid.uuid4())


@pytest.fixture(scope="module", params=WORKER_MODES)
def workers(request: pytest.FixtureRequest) -> int:
    """`serve --workers` for a module's server: each of its tests runs in both modes."""
    return int(request.param)
