"""Weight-derived results kept for one call (fperr.bounds.weight_memo): the same
bounds as without the memo, nothing kept outside a call, and the kept arrays
read-only (every batch shares them)."""

from __future__ import annotations

import numpy as np
import pytest

import fperr.bounds.weight_memo as wm
from fperr.arith import Emulated
from fperr.bounds import bound
from fperr.bounds.rules import operand_weights
from fperr.certify import certify
from fperr.examples import digits
from fperr.examples import load as load_example

LOW = Emulated.from_names("binary16", "binary32")


def _no_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wm, "memo", lambda kind, arrays, extra, compute: compute())
    import fperr.bounds.rules as rules

    monkeypatch.setattr(rules, "memo", lambda kind, arrays, extra, compute: compute())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_memo_changes_no_bound(name, monkeypatch):
    model = load_example(name)
    X, y = digits()
    X, y = X[:200], y[:200]
    with_memo = bound(model, X)
    cert = certify(model, X, y)
    _no_memo(monkeypatch)
    without = bound(model, X)
    np.testing.assert_array_equal(with_memo.bound, without.bound)
    again = certify(model, X, y)
    np.testing.assert_array_equal(cert.bounds.bound, again.bounds.bound)
    np.testing.assert_array_equal(cert.bounds.per_layer, again.bounds.per_layer)


def test_memo_lives_for_one_call_and_is_read_only():
    w = np.random.default_rng(0).standard_normal((4, 3))
    assert operand_weights(LOW, w) is not operand_weights(LOW, w)  # outside: no memo
    with wm.remembering():
        a = operand_weights(LOW, w)
        assert operand_weights(LOW, w) is a and not a.flags.writeable
        with wm.remembering():  # nested calls share the outer memo
            assert operand_weights(LOW, w) is a
        other = Emulated.from_names("bfloat16", "binary32")
        assert operand_weights(other, w) is not a
    assert wm._MEMO.get() is None


def test_norms_are_kept_across_calls_by_content_not_identity(monkeypatch):
    """An operator norm is computed once for equal weights over calls (another array
    of the same values too), again once a weight changes in place (no stale norm:
    the bound follows the new weights), and the kept arrays are read-only."""
    import fperr.bounds.norm_ranges as nr
    from fperr.layers import Dense

    calls: list[int] = []
    real = nr._dense_gains

    def counted(w):
        calls.append(1)
        return real(w)

    monkeypatch.setattr(nr, "_dense_gains", counted)
    monkeypatch.setattr(wm, "_CONTENT", wm.OrderedDict())
    w = np.random.default_rng(0).standard_normal((6, 5))
    rows, spec = nr.dense_gains(Dense(w, None))
    again = nr.dense_gains(Dense(w.copy(), None))  # a new array, equal values: kept
    assert len(calls) == 1 and again[1] == spec and not again[0].flags.writeable
    w[0, 0] += 10.0  # in place: a new content, a new norm
    rows2, spec2 = nr.dense_gains(Dense(w, None))
    assert len(calls) == 2
    assert spec2 == pytest.approx(np.linalg.norm(w, 2) * (1 + nr.SPECTRAL_MARGIN))
    assert spec2 > spec and rows2[0] > rows[0]


def test_the_content_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(wm, "_CONTENT", wm.OrderedDict())
    monkeypatch.setattr(wm, "CONTENT_ENTRIES", 3)
    for i in range(5):
        assert wm.by_content("k", np.full(2, float(i)), None, lambda i=i: i) == i
    assert len(wm._CONTENT) == 3
    # the oldest were dropped: computed anew
    assert wm.by_content("k", np.full(2, 0.0), None, lambda: "new") == "new"
    assert wm.by_content("k", np.full(2, 4.0), None, lambda: "new") == 4
