"""Property-based soundness suite (issue 11): fperr's bounds against an
emulator written from scratch for the tests, and against torch CPU runs."""
