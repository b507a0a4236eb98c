#!/bin/sh
# A seconds-long smoke run of the load generator against sscontrold (plain and TLS):
# relay, churn and idle, each figure checked for sanity. Exit 0 ok, 1 failed,
# 77 skipped (node missing). Needs only the venv and node (no npm install).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$here/../.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" "$here/run.py" --smoke "$@"
