"""torch.split / torch.chunk / x.split / x.chunk imported as slice nodes (issue 12).

No operator of their own: each piece read (``pieces[i]``) becomes a ``slice`` of
the split value.  Oracles: torch's own split/chunk (the pieces' sizes), from_torch's
float64 check of the imported model against the module, and float16 torch CPU
runs of the module within the bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.errors import SpecError

torch = pytest.importorskip("torch")
nn = torch.nn

from fperr.importers import from_torch  # noqa: E402
from fperr.importers.from_torch import split_bounds  # noqa: E402


def test_split_bounds_are_torchs():
    """Every axis length 1..12, every int size / chunk count 1..13, and sections:
    the same pieces as torch.split and torch.chunk."""
    for n in range(1, 13):
        x = torch.arange(n)
        for k in range(1, 14):
            for chunk, fn in ((False, torch.split), (True, torch.chunk)):
                want = [(int(p[0]), int(p[-1]) + 1) for p in fn(x, k)]
                assert split_bounds(n, k, chunk) == want, (n, k, chunk)
    assert split_bounds(9, [3, 4, 2], False) == [(0, 3), (3, 7), (7, 9)]
    with pytest.raises(SpecError, match="do not add up"):
        split_bounds(9, [3, 4], False)


class Pieces(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.proj, self.head = nn.Linear(6, 8), nn.Linear(4, 3)

    def forward(self, x):  # x (N, 5, 6)
        h = self.proj(x)  # (N, 5, 8)
        if self.how == "glu":  # a gated linear unit
            a, b = h.chunk(2, -1)
            h = a * torch.sigmoid(b)
        elif self.how == "sections":
            a, _, c = torch.split(h, [2, 4, 2], dim=2)
            h = torch.cat([a, c], dim=-1)
        elif self.how == "chunk_fn":
            a, b = torch.chunk(h, 2, dim=-1)
            h = a + b
        elif self.how == "size":  # pieces 3, 3, 2; the last one alone
            h = torch.cat([h.split(3, -1)[-1], h.split(3, -1)[0][:, :, :2]], dim=-1)
        elif self.how == "tokens":  # along the token axis, pieces of 2, 2, 1
            p = h.split(2, dim=1)
            h = (p[0] * p[1])[:, :, :4]
        elif self.how == "batch":
            h = h.split(1, dim=0)[0][:, :, :4]
        return self.head(h.mean(1))


@pytest.mark.parametrize("how", ["glu", "sections", "chunk_fn", "size", "tokens"])
def test_pieces_import_as_slices(how):
    """from_torch checks the model against the float64 module; a float16 torch CPU run
    of the module lies within the bound."""
    torch.manual_seed(0)
    module = Pieces(how)
    model = from_torch(module, (5, 6))
    assert "slice" in [layer.type for layer in model.layers]
    x = np.float16(np.random.default_rng(0).normal(size=(6, 5, 6))).astype(np.float64)
    with torch.no_grad():
        run = module.to(torch.float16)(torch.tensor(x, dtype=torch.float16)).double().numpy()
    r = bound_run(model, x, Emulated.from_names("binary16")).radius
    err = np.abs(run - model.forward(x))
    assert np.all(err <= r) and err.max() > 0


def test_split_along_the_batch_axis_is_refused():
    with pytest.raises(SpecError, match="not the batch axis") as exc:
        from_torch(Pieces("batch"), (5, 6))
    assert "\n" not in str(exc.value)
