"""Helpers shared by tests/unit and tests/integration (importable because pytest puts tests/ on sys.path)."""
