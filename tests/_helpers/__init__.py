"""Helpers shared by the tests, each defined once (``tests/test_layout.py`` checks that no
test file copies one). ``tests/`` is on ``sys.path`` (tests/conftest.py), so a test imports
them as ``from _helpers.<topic> import name``."""
