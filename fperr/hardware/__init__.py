"""Real hardware: run IR models in PyTorch (CPU, CUDA) and check the bounds against them.

* :mod:`~fperr.hardware.torch_env` -- importing torch, devices, global flags;
* :mod:`~fperr.hardware.torch_exec` -- an IR model as an ``nn.Module``, runs in
  float64/float32/TF32/float16/bfloat16/autocast;
* :mod:`~fperr.hardware.probe` -- how a platform's GEMMs accumulate;
* :mod:`~fperr.hardware.configs` -- the configurations validated and the
  arithmetic whose bound must cover each;
* :mod:`~fperr.hardware.validate` -- every bound and certificate against real runs;
* :mod:`~fperr.hardware.reports` -- validation reports, stored losslessly;
* :mod:`~fperr.hardware.suite` -- probe and validate the bundled examples.

torch is imported only inside functions: importing this package does not
import it.
"""

from __future__ import annotations

from .configs import CONFIGS, TorchConfig, arithmetic_for
from .probe import ProbeResult, probe
from .reports import ConfigResult, ValidationReport, summarize
from .torch_exec import DTYPES, TorchRun, run_torch, to_torch
from .validate import recheck, validate

__all__ = [
    "CONFIGS",
    "DTYPES",
    "ConfigResult",
    "ProbeResult",
    "TorchConfig",
    "TorchRun",
    "ValidationReport",
    "arithmetic_for",
    "probe",
    "recheck",
    "run_torch",
    "summarize",
    "to_torch",
    "validate",
]
