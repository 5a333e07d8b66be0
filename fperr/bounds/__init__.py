"""Rounding-error bounds through a model, per input and per layer.

``bound(model, X)`` returns, for each input, a componentwise bound B on
``|y_low - y_ref|``: the low-precision run (default binary16 storage,
binary32 accumulation) and the reference run (default binary32) are each
enclosed against exact arithmetic (:mod:`fperr.bounds.engine`) and
B = B_low + B_ref.  Engines: ``"backward"`` (:mod:`fperr.bounds.backward`,
cost ~ K forward passes), ``"zonotope"`` (:mod:`fperr.bounds.enclosure`, the
reference) and ``"auto"`` (the backward engine for piecewise-linear models,
the zonotope for models with curved layers).  Methods:

* ``"deterministic"``: worst case; sound with certainty, for every summation
  order.
* ``"probabilistic"``: a *model*, not a certificate.  Higham & Mary (2019):
  dot-product errors lambda sqrt(n) u, and the roundings of computed values
  combined in quadrature (Hoeffding), assuming independent zero-mean
  rounding errors; the failure probability per input is reported under that
  assumption.  Round-to-nearest is deterministic, so the assumption (and the
  probability) is rigorous only under stochastic rounding (Connolly, Higham
  & Mary 2021).  Roundings of the data -- inputs, weights, biases, scales --
  are deterministic functions of it that align for structured data, so they
  are bounded in the worst case in both methods.
"""

from __future__ import annotations

from .engine import (
    ENGINES,
    PROBABILISTIC_NOTE,
    BoundResult,
    RunBound,
    bound,
    bound_run,
    lambda_for,
)

__all__ = ["ENGINES", "PROBABILISTIC_NOTE", "RunBound", "BoundResult", "bound",
           "bound_run", "lambda_for"]  # fmt: skip
