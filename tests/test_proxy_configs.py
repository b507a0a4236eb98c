"""The shipped nginx and HAProxy examples are valid configurations (nginx -t,
haproxy -c), with a real certificate in place of the example paths."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from certs import PKI
from conftest import ROOT


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(f"/usr/sbin/{tool}")
    if path is None:
        pytest.fail(f"{tool} is missing: `make test` installs the Debian package {tool}")
    return path


def test_nginx_example_is_valid(tmp_path):
    nginx = need("nginx")
    chain, key, _ = PKI(tmp_path / "pki").server()
    site = (ROOT / "etc/nginx/sscontrol-signaling.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/signaling.example.com/fullchain.pem", str(chain))
    site = site.replace("/etc/letsencrypt/live/signaling.example.com/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_haproxy_example_is_valid(tmp_path):
    haproxy = need("haproxy")
    chain, key, _ = PKI(tmp_path / "pki").server()
    pem = tmp_path / "signaling.pem"
    pem.write_bytes(chain.read_bytes() + key.read_bytes())
    cfg = (ROOT / "etc/haproxy/sscontrol-signaling.cfg").read_text()
    cfg = cfg.replace("/etc/haproxy/certs/signaling.example.com.pem", str(pem))
    (tmp_path / "haproxy.cfg").write_text(cfg)
    result = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr
