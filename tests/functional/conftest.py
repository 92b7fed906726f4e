import pytest

from torchrun_helpers import run_torchrun


@pytest.fixture
def torchrun():
    """The ``run_torchrun`` helper as a fixture."""
    return run_torchrun
