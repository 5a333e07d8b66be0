"""A run that may overflow gets an infinite bound whatever shares its batch.

Found by the quick_huge soundness profile (seed 109): with a binary16
accumulator, an input whose dot products may overflow got an infinite bound
alone but a finite one next to an input whose values were already NaN. The
engines skip the per-unit overflow test where the batch's largest total cannot
overflow, and the bound on the partial sums mapped a NaN total to 0 instead of
"may overflow" (fperr.bounds.exponent_range.sum_bound).
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound
from fperr.bounds import exponent_range as xr
from fperr.bounds.coarse import coarse_bound
from fperr.bounds.quick import quick_bound
from fperr.formats import get_format
from fperr.layers import Dense
from fperr.model import Model

LOW = Emulated.from_names("binary16", "binary16")  # a binary16 accumulator
REF = Emulated.from_names("binary32", "binary32")


def test_a_total_that_is_not_a_number_may_overflow():
    f16 = get_format("binary16")
    assert xr.may_overflow(np.nan, 4, f16.u, f16)
    assert xr.may_overflow(np.array([np.nan, 1.0, np.inf]), 4, f16.u, f16).tolist() == [
        True, False, True]  # fmt: skip


MODEL = Model("acc16", (2,), (
    Dense(np.array([[1.0, -1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0]]), None),
    Dense(np.array([[0.5, 0.5, -0.5, 0.3], [0.25, 0.0, 0.0, 0.25]]), None),
))  # fmt: skip
# row 0 overflows binary16 on storage (inf, then inf - inf = NaN); row 1's second
# layer sums terms of total magnitude 1.08e5 > 65504 to a finite 1.8e4: it may overflow
X = np.array([[1e6, 1e6], [3e4, 3e4]])


@pytest.mark.parametrize("how", ["coarse", "quick", "backward", "zonotope"])
def test_the_bound_of_an_input_that_may_overflow_does_not_depend_on_its_batch(how):
    run = {
        "coarse": lambda x: coarse_bound(MODEL, x, LOW, REF),
        "quick": lambda x: quick_bound(MODEL, x, LOW, REF),
        "backward": lambda x: bound(MODEL, x, LOW, REF, engine="backward"),
        "zonotope": lambda x: bound(MODEL, x, LOW, REF, engine="zonotope"),
    }[how]
    alone = run(X[1:]).bound[0]
    assert np.isinf(alone[0])  # may overflow: no finite bound
    np.testing.assert_array_equal(run(X).bound[1], alone)
    assert np.isfinite(MODEL.forward(X[1:], LOW)).all()  # this run did not overflow
