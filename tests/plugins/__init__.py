"""pytest plugins, one concern each, registered by tests/conftest.py's ``pytest_plugins``; test
modules request their fixtures as arguments and never import them (tests/test_architecture.py)."""
