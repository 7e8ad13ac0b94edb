import random

import numpy as np
import pytest
import torch

from transformer_book import seed_everything


def test_seed_everything_makes_all_three_generators_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    seed_everything(123)
    a = draw()
    seed_everything(123)
    b = draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    seed_everything(124)
    assert draw()[0] != a[0]


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (2**70, ValueError), (1.5, TypeError),
                                       ("0", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(bad, error):
    with pytest.raises(error, match=r"seed must be an int in \[0, 9223372036854775807\]"):
        seed_everything(bad)
