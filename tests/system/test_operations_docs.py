"""The runbook's systemd blocks, run as an operator would: in a booted Debian 12 container of
its own, every ```sh systemd block of docs/operations, in the order deployment.md,
change-management.md, troubleshooting.md, incident-response.md, each with ``bash -e`` as
root from a directory holding only the .deb (conventions: docs/operations/README.md): the
files the runbook installs besides the package come from the package's examples, $EXAMPLES,
set to the path the conventions name. What the blocks cannot do by themselves is simulated: certbot's
first issue (a 90-day certificate from a test CA in /etc/letsencrypt/live/localhost/) and a
newer package for the upgrade (the same .deb repacked with a higher version).

Then what the docs claim is checked from outside: the deploy hook serves a renewed
certificate without restarting the daemon, the leaked API key is refused, the journald
drop-in is in force, the upgrade and the rollback happened.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl

import pytest
from cryptography import x509

from certs import PKI
from test_operations_docs import DOCS, DOC_ORDER, doc_blocks, run_block, server_certificate
from wsclient import auth_message

from . import sysharness

pytestmark = pytest.mark.system

WORKDIR = "/root/sscontrold"
LINEAGE = "/etc/letsencrypt/live/localhost"
EXTRA_PACKAGES = ("curl", "iproute2")  # the docs' curl, ss and nstat; a real node has them
# Where the conventions say the package's example files are (not set by the test to
# something else: the blocks must find them where an operator would).
EXAMPLES = re.search(r"(?m)^EXAMPLES=(\S+)", (DOCS / "README.md").read_text()).group(1)


@pytest.fixture(scope="module")
def ops_node(system_deb, tmp_path_factory):
    """A container of its own (the docs reconfigure everything: TLS, secrets, journald),
    the package not yet installed (deployment.md installs it), the test ports in place."""
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is not installed (make packaging-deps installs systemd-container)")
    tmp = tmp_path_factory.mktemp("opsdocs")
    rootfs = sysharness.ensure_rootfs([*sysharness.deb_dependencies(system_deb), *EXTRA_PACKAGES])
    c = sysharness.Container(rootfs, name="opsdocs")
    try:
        c.boot()
        c.configure_test_ports()
        c.write_file("/etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
        # The release directory: the .deb only (the runbook's other files come with it).
        c.run(["mkdir", "-p", WORKDIR])
        shutil.copyfile(system_deb, c.path(f"{WORKDIR}/{system_deb.name}"))
        newer = sysharness.repack_deb(system_deb, tmp, sysharness.deb_field(system_deb, "Version") + "+ops1")
        shutil.copyfile(newer, c.path(f"{WORKDIR}/{newer.name}"))
        # certbot's first issue, as certbot leaves it (key root-only).
        pki = PKI(tmp / "pki")
        chain, key = server_certificate(pki, tmp / "issued")
        c.write_file(f"{LINEAGE}/fullchain.pem", chain.read_text(), mode=0o644)
        c.write_file(f"{LINEAGE}/privkey.pem", key.read_text(), mode=0o600)
        c.write_file("/root/ca.pem", pki.ca_path.read_text())
        c.pki, c.tmp, c.deb, c.newer_deb = pki, tmp, system_deb, newer
        yield c
    finally:
        c.shutdown()


def block_env(c, deb_name: str) -> dict[str, str]:
    return {
        "DOMAIN": "localhost", "PORT": str(c.ports["port"]),
        "ADMIN": f"http://127.0.0.1:{c.ports['admin_port']}",
        "TURN_HOST": "localhost", "TURN_PORT": "3478", "DEB": deb_name, "EXAMPLES": EXAMPLES,
        "SSL_CERT_FILE": "/root/ca.pem", "CURL_CA_BUNDLE": "/root/ca.pem",
    }


def served_certificate(c) -> x509.Certificate:
    ctx = ssl.create_default_context(cafile=str(c.pki.ca_path))
    with socket.create_connection(("127.0.0.1", c.ports["port"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def turn_status(c, api_key: str) -> int:
    """POST an HMAC token made with ``api_key`` to /turn: 200 accepted, 401 refused."""
    body = json.dumps(auth_message(api_key, "systest-check")).encode()
    ctx = ssl.create_default_context(cafile=str(c.pki.ca_path))
    from conftest import http
    return http("POST", f"https://localhost:{c.ports['port']}/turn", body,
                {"content-type": "application/json"}, context=ctx)[0]


def test_the_runbooks_systemd_blocks_run_on_a_booted_debian(ops_node):
    c = ops_node

    def runner(script: str, env: dict[str, str]):
        return c.run(["bash", "-e", "-c", f"cd {WORKDIR}\n{script}"], env=env, check=False, timeout=300)

    ran: dict[str, int] = {}
    leaked_key = None
    for doc in DOC_ORDER:
        deb = c.newer_deb.name if doc == "change-management.md" else c.deb.name
        blocks = [b for b in doc_blocks(doc) if "systemd" in b.tags]
        assert blocks, doc
        if doc == "incident-response.md":  # the key the incident will treat as leaked
            leaked_key = c.read_file("/etc/sscontrol/secrets/api_keys").split()[0]
            assert turn_status(c, leaked_key) == 200
        for block in blocks:
            run_block(block, runner, block_env(c, deb))
            ran[doc] = ran.get(doc, 0) + 1
        if doc == "deployment.md":
            assert c.is_active() == "active"
            assert served_certificate(c).subject.rfc4514_string() == "CN=localhost"
    print("systemd blocks run:", ran)
    assert ran == {doc: sum("systemd" in b.tags for b in doc_blocks(doc)) for doc in DOC_ORDER}

    # incident-response.md rotated the API key: the old one is refused, the new one accepted.
    current = c.read_file("/etc/sscontrol/secrets/api_keys").split()
    assert len(current) == 1 and current[0] != leaked_key
    assert turn_status(c, leaked_key) == 401
    assert turn_status(c, current[0]) == 200
    # ... and the TURN secret: one, new.
    assert len(c.read_file("/etc/sscontrol/secrets/turn_secrets").split()) == 1

    # change-management.md upgraded and rolled back: the original version is installed again.
    assert c.installed_version() == sysharness.deb_field(c.deb, "Version")
    cached = c.run(["ls", "/var/cache/sscontrol-signaling"]).stdout.split()
    assert sorted(cached) == sorted([c.deb.name, c.newer_deb.name])

    # journald: the drop-in is in force, the journal persistent, no complaint about the file.
    config = c.run(["systemd-analyze", "cat-config", "systemd/journald.conf"]).stdout
    assert "/etc/systemd/journald.conf.d/60-sscontrol-signaling.conf" in config
    assert "MaxRetentionSec=97day" in config
    assert c.exists("/var/log/journal")
    journald = c.journal("systemd-journald.service")
    assert "60-sscontrol-signaling.conf" not in journald, journald[-2000:]
    # the sysctl file is where systemd-sysctl reads it at boot
    assert c.exists("/etc/sysctl.d/60-sscontrol-signaling.conf")
    # ... both installed from the package's examples, which are the source tree's files
    assert EXAMPLES == "/usr/share/doc/sscontrol-signaling/examples"
    assert not c.exists(f"{WORKDIR}/etc")
    for installed, example, source in (
            ("/etc/sysctl.d/60-sscontrol-signaling.conf", "sysctl.d/60-sscontrol-signaling.conf",
             "etc/sysctl.d/60-sscontrol-signaling.conf"),
            ("/etc/systemd/journald.conf.d/60-sscontrol-signaling.conf",
             "systemd/journald.conf.d/sscontrol-signaling.conf",
             "etc/systemd/journald.conf.d/sscontrol-signaling.conf")):
        c.run(["cmp", installed, f"{EXAMPLES}/{example}"])
        assert c.read_file(installed) == (sysharness.REPO / source).read_text()


def test_the_deploy_hook_serves_a_renewed_certificate_without_a_restart(ops_node):
    c = ops_node
    if not c.exists("/etc/letsencrypt/renewal-hooks/deploy/sscontrol-signaling"):
        pytest.skip("needs the deployment of the previous test")
    before = served_certificate(c)
    pid = c.main_pid()
    cursor = c.journal_cursor()
    chain, key = server_certificate(c.pki, c.tmp / "renewed")  # what certbot renew writes
    c.write_file(f"{LINEAGE}/fullchain.pem", chain.read_text(), mode=0o644)
    c.write_file(f"{LINEAGE}/privkey.pem", key.read_text(), mode=0o600)
    # what certbot runs after a renewal
    c.run(["env", f"RENEWED_LINEAGE={LINEAGE}", "/etc/letsencrypt/renewal-hooks/deploy/sscontrol-signaling"])
    sysharness.wait_for(lambda: "reload.done" in c.journal(cursor=cursor), timeout=10, what="reload.done")
    after = served_certificate(c)
    assert after.serial_number != before.serial_number
    assert after.serial_number == x509.load_pem_x509_certificate(chain.read_bytes()).serial_number
    assert c.main_pid() == pid and c.is_active() == "active"
    modes = c.run(["stat", "-c", "%a %U %G %n", "/etc/sscontrol/tls/fullchain.pem",
                   "/etc/sscontrol/tls/privkey.pem"]).stdout.splitlines()
    assert all(line.startswith("640 root sscontrol-signaling") for line in modes), modes
    assert not c.run(["sh", "-c", "ls /etc/sscontrol/tls/*.new 2>/dev/null"], check=False).stdout
