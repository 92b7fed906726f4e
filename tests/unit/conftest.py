import copy

import pytest

from tiny_models import TinyLM


@pytest.fixture
def tiny_lm():
    return TinyLM()


@pytest.fixture
def tiny_lm_pair():
    model = TinyLM()
    return model, copy.deepcopy(model)
