"""A CI matrix: the same test against several images, by indirect parametrization."""

import pytest


@pytest.mark.sandbox(timeout=120)  # fields shared by every row of the matrix
@pytest.mark.parametrize(
    "sandbox",
    [
        pytest.param({"image": "python:3.11-slim"}, id="py311"),
        pytest.param({"image": "python:3.12-slim"}, id="py312"),
    ],
    indirect=True,
)
def test_python_runs(sandbox):
    result = sandbox.exec("python3", "-c", "print(2 + 2)")
    assert result.check().stdout == "4\n"
    assert sandbox.spec.image.startswith("python:3.1")
