"""Registered operators of the model IR, one module per operator (see :mod:`.base`).

Importing this package imports every module in it, and each module registers
its operator class in :data:`REGISTRY` (:func:`.base.register`): a new
operator is one new file here, plus its tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, Operator, OperatorSpec, OperatorUnsupported, is_operator, register

__all__ = ["REGISTRY", "Operator", "OperatorSpec", "OperatorUnsupported", "is_operator",
           "register", "operator_specs"]  # fmt: skip

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("base", "checks"):
        importlib.import_module(f"{__name__}.{_info.name}")


def operator_specs() -> tuple[type[OperatorSpec], ...]:
    """The YAML spec class of every registered operator (for :mod:`fperr.spec`)."""
    classes = dict.fromkeys(REGISTRY.values())  # a class standing for several types once
    return tuple(spec for cls in classes for spec in cls.specs())
