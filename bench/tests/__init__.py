"""Tests of the harness's own logic: `.venv/bin/pytest bench/tests`."""
