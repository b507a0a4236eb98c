# A package (tests/system -> module "system"), so that its conftest.py does not shadow
# tests/conftest.py, which the unit tests import as "conftest". Import the harness with
# "from . import sysharness".
