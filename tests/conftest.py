"""Shared test setup: one CPU thread per process (CI has 2 cores), seeded RNGs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PYTHONHASHSEED", "0")
# checkpoints the tests write name the test-only ``tests.helpers_models`` classes: allow them as
# a user would (bnnrobust.safe_loading); every other module stays refused
os.environ["BNNROBUST_ALLOW_MODULES"] = "tests"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
