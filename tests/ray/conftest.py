"""The ray tier's guard: no test leaves a Train run or a placement group behind.

All of the tier's tests share one local Ray (``ray_session``). A test whose
run leaks its workers' placement group (or an actor holding CPUs) would make
every later test wait for room that never comes. After each test the guard
waits briefly until the cluster is whole again; if it is not, the leaked
groups are removed, so the next test can run, and this test fails, by name,
saying what it left (:func:`tests.support.ray_guard.left_behind`).
"""

from __future__ import annotations

import pytest

from tests.support.ray_guard import left_behind

SETTLE_S = 30.0


@pytest.fixture(autouse=True)
def nothing_left_behind(request, ray_session):
    yield
    left = left_behind(SETTLE_S)
    if left:
        pytest.fail(f"{request.node.nodeid} {left}", pytrace=False)
