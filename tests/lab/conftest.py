"""The `lab` fixture lives in tests/conftest.py so tests/escape shares the same lab."""
