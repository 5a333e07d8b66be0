"""Figures of the fperr paper: each module has ``make(out_dir) -> list[Path]``."""
