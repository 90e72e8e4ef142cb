"""Session fixtures: each value set in tests/charts/values is rendered once and shared by every test."""

from __future__ import annotations

import pytest

from chart_helpers import VALUE_SETS, Render, load_values, render


@pytest.fixture(scope="session")
def renders() -> dict[str, Render]:
    return {name: render(load_values(name), name=name) for name in VALUE_SETS}


@pytest.fixture(scope="session", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest, renders: dict[str, Render]) -> Render:
    return renders[request.param]
