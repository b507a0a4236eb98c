# A package (tests/browser -> module "browser"), so that its conftest.py does not shadow
# tests/conftest.py, and its package-scoped fixtures (the network namespace) end with it.
