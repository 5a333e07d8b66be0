"""Lost updates: where ``w + u`` rounds back to ``w`` in a format."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..formats import Format, get_format
from ..rounding import round as fround


# -- lost updates -------------------------------------------------------------------
def lost_updates(w: npt.ArrayLike, u: npt.ArrayLike, fmt: Format | str) -> npt.NDArray[np.bool_]:
    """Where ``w + u`` rounds (to nearest, ties to even) back to ``w``.

    ``w`` must hold numbers of ``fmt`` (round them first); ``u`` is any
    float64.  Decided from the spacing of the format around ``w``, without
    forming ``w + u``: the update is lost iff ``|u|`` is below half the gap to
    the neighbour in its direction, or equal to it and ``w`` has an even
    significand.  The gap below a power of two ``2**e`` (``e > emin``) is half
    the gap above it.  ``u == 0`` counts as lost; non-finite ``w`` or ``u``
    never does.  At ``w == 0`` the format itself decides (flush-to-zero
    formats flush more than half a subnormal step).
    """
    fmt = get_format(fmt)
    wa = np.asarray(w, dtype=np.float64)
    ua = np.asarray(u, dtype=np.float64)
    wa, ua = np.broadcast_arrays(wa, ua)
    a = np.abs(wa)
    finite = np.isfinite(wa) & np.isfinite(ua)
    safe = np.where(finite & (a > 0), a, 1.0)
    _, ex = np.frexp(safe)
    e_raw = ex.astype(np.int64) - 1  # floor(log2 |w|)
    e = np.maximum(e_raw, fmt.emin)
    q_up = np.ldexp(1.0, e - fmt.p + 1)  # spacing above |w|
    power_of_two = (safe == np.ldexp(1.0, e_raw)) & (e_raw > fmt.emin)
    q_down = np.where(power_of_two, q_up / 2, q_up)
    away = np.sign(ua) == np.sign(wa)
    half = np.where(away, q_up, q_down) / 2
    even = np.fmod(safe / q_up, 2.0) == 0.0
    au = np.abs(ua)
    lost = (au < half) | ((au == half) & even)
    zero_w = finite & (a == 0)
    if zero_w.any():
        lost = np.where(zero_w, fround(np.where(zero_w, ua, 0.0), fmt) == 0.0, lost)
    result: npt.NDArray[np.bool_] = finite & lost
    return result
