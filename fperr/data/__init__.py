"""Package data: the measured kernel allowance (fperr.bounds.allowance)."""
