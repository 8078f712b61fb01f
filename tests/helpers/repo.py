"""Where the checkout is, for tests in any layer directory (tests/unit, integration, system)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
