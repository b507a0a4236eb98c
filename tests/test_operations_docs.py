"""The operations runbook (docs/operations/*.md) is executable, and its files are valid.

Convention (docs/operations/README.md): a fenced block whose info string is ``sh runnable``
is run here with ``bash -e`` against a LIVE daemon (native TLS, API key and TURN secret
files, Redis with a password, a real coturn), with the docs' variables (DOMAIN, PORT, ADMIN,
TURN_HOST, TURN_PORT, DEB, EXAMPLES) set to the test's values; ``sh systemd`` blocks run in a booted
Debian 12 container (tests/system/test_operations_docs.py). ``expect=TEXT`` at the end of
the info string: TEXT must be in the block's output. ``check=nginx-http`` /
``nginx-location`` / ``haproxy-frontend``: a snippet validated inside the shipped proxy
examples by ``nginx -t`` / ``haproxy -c``.

Also here: every block tag is one the runners know and every tagged block is found (so the
extraction cannot silently find nothing), no secret-looking literal in the docs, every link
into the docs (and every alert's runbook_url) lands on an anchor, and the sysctl and
journald files parse and name only keys this kernel / journald knows.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs import PKI, _name
from conftest import ROOT, http
from test_proxy_configs import need
from wsclient import auth_message, connect

DOCS = ROOT / "docs" / "operations"
# The order the container runs them in (deployment first: it sets the node up).
DOC_ORDER = ("deployment.md", "change-management.md", "troubleshooting.md", "incident-response.md")
SYSCTL_FILE = ROOT / "etc" / "sysctl.d" / "60-sscontrol-signaling.conf"
JOURNALD_FILE = ROOT / "etc" / "systemd" / "journald.conf.d" / "sscontrol-signaling.conf"

RUN_TAGS = {"runnable", "systemd"}
CHECKS = {"nginx-http", "nginx-location", "haproxy-frontend"}
# At least this many blocks of each kind (a guard against a parser that finds nothing).
MIN_RUNNABLE, MIN_SYSTEMD = 25, 45


# --- the docs' blocks


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    tags: set[str] = field(default_factory=set)
    expect: str | None = None
    check: str | None = None
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>.*)$")


def doc_blocks(name: str) -> list[Block]:
    """Every fenced block of docs/operations/NAME, with its info string parsed:
    ``LANG [TAG...] [check=NAME] [expect=TEXT TO THE END OF THE LINE]``."""
    lines = (DOCS / name).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group("indent"), m.group("info").strip()
        expect = None
        if " expect=" in f" {info}":
            info, _, expect = f" {info}".partition(" expect=")
            info = info.strip()
        words = info.split()
        block = Block(name, i + 1, words[0] if words else "", expect=expect)
        for word in words[1:]:
            if word.startswith("check="):
                block.check = word.partition("=")[2]
            else:
                block.tags.add(word)
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        block.text = "\n".join(body) + "\n"
        blocks.append(block)
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for name in DOC_ORDER for b in doc_blocks(name)]


def run_block(block: Block, runner, env: dict[str, str]) -> str:
    """Run one block with ``runner(script, env) -> CompletedProcess`` (bash -e), check its
    status and its expect=; returns its output."""
    result = runner(block.text, env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{block.where}: exit status {result.returncode}\n--- block\n{block.text}--- output\n{out[-4000:]}")
    if block.expect is not None:
        assert block.expect in result.stdout, (
            f"{block.where}: {block.expect!r} not in the output\n--- block\n{block.text}--- output\n{out[-4000:]}")
    return out


def test_every_block_is_tagged_as_the_runners_know_and_none_is_missed():
    blocks = all_blocks()
    for b in blocks:
        assert b.lang, f"{b.where}: a fence without a language"
        unknown = b.tags - RUN_TAGS
        assert not unknown, f"{b.where}: unknown tags {unknown} (known: {RUN_TAGS}, check=, expect=)"
        if b.tags:
            assert b.lang == "sh", f"{b.where}: only sh blocks run"
        if b.check:
            assert b.check in CHECKS, f"{b.where}: unknown check={b.check}"
        assert b.text.strip(), f"{b.where}: empty block"
    # A raw count, independent of the parser: every opening fence carrying a tag was parsed.
    for tag in RUN_TAGS:
        raw = sum(len(re.findall(rf"(?m)^[ \t]*```sh\b[^\n]*\b{tag}\b", (DOCS / n).read_text())) for n in DOC_ORDER)
        assert raw == sum(tag in b.tags for b in blocks), tag
    assert sum("runnable" in b.tags for b in blocks) >= MIN_RUNNABLE
    assert sum("systemd" in b.tags for b in blocks) >= MIN_SYSTEMD
    for name in DOC_ORDER:  # each doc says how its blocks are run
        assert "README.md#conventions" in (DOCS / name).read_text().splitlines()[2]


# --- no secrets in the docs

_TOKEN = re.compile(r"(?<![\w/.=-])[A-Za-z0-9_+/-]{24,}={0,2}(?![\w/])")
_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_ASSIGNED = re.compile(r"(?im)^\s*(static-auth-secret|requirepass|api_keys|turn_secrets|redis_password|"
                       r"masterauth|auth_password)\s*[=: ]\s*(\S+)")


def test_the_docs_contain_no_secret_looking_literal():
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for token in _TOKEN.findall(text):
            mixed = (re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"[0-9]", token))
            assert not mixed, f"{path.name}: {token!r} looks like a key"
        assert not _HEX.findall(text), f"{path.name}: a long hex string looks like a key"
        for key, value in _ASSIGNED.findall(text):
            assert value.startswith(("$", '"$', "<")), f"{path.name}: {key} given a literal value {value!r}"


# --- links and anchors


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    found = {_slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", text))}
    return found | set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_every_link_into_the_docs_and_every_runbook_url_lands_on_an_anchor():
    known = {p.name: anchors(p) for p in DOCS.glob("*.md")}
    for path in DOCS.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md|)#([\w-]+)\)", path.read_text()):
            assert anchor in known[target or path.name], f"{path.name}: link to {target or path.name}#{anchor}"
    rules = list((ROOT / "etc" / "prometheus").glob("*.rules.yml"))
    urls = [u for rule in rules for u in re.findall(r'(?m)^\s+runbook_url:\s*"?([^"\s]+)', rule.read_text())]
    for url in urls:
        target, _, anchor = url.partition("#")
        name = target.rpartition("/")[2]
        assert name in known and anchor in known[name], f"runbook_url {url} has no anchor in docs/operations"
    expected = {"connections-refused", "not-ready", "high-error-rate", "memory", "cpu", "file-descriptors",
                "authentication-failures", "redis-down", "instance-down"}
    assert expected <= known["troubleshooting.md"]


# --- proxy snippets (nginx -t, haproxy -c on the shipped examples with the snippet inserted)


def test_the_proxy_rate_limit_snippets_are_valid(tmp_path):
    snippets = {b.check: b.text for b in all_blocks() if b.check}
    assert set(snippets) == CHECKS
    chain, key, _ = PKI(tmp_path / "pki").server()

    site = (ROOT / "etc/nginx/sscontrol-signaling.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/signaling.example.com/fullchain.pem", str(chain))
    site = site.replace("/etc/letsencrypt/live/signaling.example.com/privkey.pem", str(key))
    site = snippets["nginx-http"] + site
    site, n = re.subn(r"(?m)^(\s*location / \{\n)", lambda m: m.group(1) + snippets["nginx-location"], site)
    assert n == 1
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n")
    result = subprocess.run([need("nginx"), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr

    pem = tmp_path / "signaling.pem"
    pem.write_bytes(chain.read_bytes() + key.read_bytes())
    cfg = (ROOT / "etc/haproxy/sscontrol-signaling.cfg").read_text()
    cfg = cfg.replace("/etc/haproxy/certs/signaling.example.com.pem", str(pem))
    cfg, n = re.subn(r"(?m)^(    bind :80\n)", lambda m: m.group(1) + snippets["haproxy-frontend"], cfg)
    assert n == 1
    (tmp_path / "haproxy.cfg").write_text(cfg)
    result = subprocess.run([need("haproxy"), "-c", "-f", str(tmp_path / "haproxy.cfg")],
                            capture_output=True, text=True, timeout=30)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Configuration file is valid" in out, out
    assert "WARNING" not in out, out


# --- the live daemon the runnable blocks run against


def server_certificate(pki: PKI, directory: Path, days: int = 90) -> tuple[Path, Path]:
    """A leaf for localhost/127.0.0.1 valid ``days`` (as Let's Encrypt's), under pki's CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(pki.inter.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(pki.inter_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    chain, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    pem = serialization.Encoding.PEM
    chain.write_bytes(leaf.public_bytes(pem) + pki.inter.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return chain, key_path


@pytest.fixture
def live_node(tmp_path, daemon_factory, coturn_factory, redis_server):
    """A node as deployment.md builds it (TLS, key and secret files, TURN, Redis), and the
    environment its runnable blocks get."""
    api_key, turn_secret, redis_password = (secrets.token_urlsafe(32) for _ in range(3))
    turn = coturn_factory(turn_secret)
    redis = redis_server(password=redis_password)
    pki = PKI(tmp_path / "pki")
    chain, key = server_certificate(pki, tmp_path / "tls")
    files = {}
    for name, value in (("api_keys", api_key), ("turn_secrets", turn_secret), ("redis_password", redis_password)):
        files[name] = tmp_path / name
        files[name].write_text(value + "\n")
        files[name].chmod(0o600)
    conf = tmp_path / "signaling.conf"
    conf.write_text(
        f"[server]\ntls_cert = {chain}\ntls_key = {key}\n\n"
        f"[auth]\napi_key_file = {files['api_keys']}\n\n"
        f"[turn]\nturn_secret_file = {files['turn_secrets']}\nturn_uris = {turn.uri}\n\n"
        f"[redis]\nredis_url = {redis.url}\nredis_password_file = {files['redis_password']}\n")
    node = daemon_factory("--config", str(conf), tls=True)
    ctx = pki.client_context()
    ready = None
    for _ in range(100):  # Redis is checked once a second
        ready = http("GET", f"{node.admin}/ready")
        if ready[0] == 200:
            break
        __import__("time").sleep(0.1)
    assert ready and ready[0] == 200, ready
    # A client has come and gone (so the per-result counters exist, as on a node in service).
    peer = connect(node.ws, ssl=pki.client_context())
    assert peer.request(auth_message(api_key, "warmup-device"))["type"] == "auth_success"
    peer.join("warmup-room")
    peer.close()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
    env.update({
        "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin",
        "DOMAIN": "localhost", "PORT": str(node.port), "ADMIN": node.admin,
        "TURN_HOST": "127.0.0.1", "TURN_PORT": str(turn.port), "DEB": "sscontrol-signaling_test_all.deb",
        # The package's examples are the source tree's etc/ files (debian/sscontrol-signaling.examples);
        # the container's run uses the installed copies (tests/system/test_operations_docs.py).
        "EXAMPLES": str(ROOT / "etc"),
        "SSCONTROL_CONFIG": str(conf),
        # the test CA, for curl, openssl and Python (the docs' commands use the system's store)
        "SSL_CERT_FILE": str(pki.ca_path), "CURL_CA_BUNDLE": str(pki.ca_path),
        "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
    })
    node.env_for_blocks = env
    node.ctx = ctx
    return node


def _bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("doc", DOC_ORDER)
def test_runnable_blocks_run_against_a_live_daemon(doc, live_node):
    blocks = [b for b in doc_blocks(doc) if "runnable" in b.tags]
    assert blocks, f"{doc} has no runnable block"
    ran = []
    for block in blocks:
        out = run_block(block, _bash, live_node.env_for_blocks)
        ran.append(block.where)
        if os.environ.get("SSCONTROL_SHOW_BLOCKS"):  # to read what the commands print
            print(f"--- {block.where}\n{block.text}--- output\n{out}")
    assert len(ran) == len(blocks)
    print(f"{doc}: ran {len(ran)} runnable blocks: {', '.join(ran)}")


# --- the kernel settings


def sysctl_settings() -> list[tuple[str, str, int]]:
    """(key, value, line) of each setting; every one must come right under a comment saying
    why (settings of one group may share it: no blank line between)."""
    settings = []
    explained = False
    for n, raw in enumerate(SYSCTL_FILE.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            explained = False
        elif line.startswith(("#", ";")):
            explained = True
        else:
            key, sep, value = line.partition("=")
            assert sep, f"line {n}: not key = value"
            assert explained, f"line {n}: {key.strip()} has no comment saying why"
            settings.append((key.strip(), " ".join(value.split()), n))
    return settings


def test_sysctl_file_names_only_known_keys_with_well_formed_values():
    settings = sysctl_settings()
    keys = [k for k, _, _ in settings]
    assert len(keys) == len(set(keys)), "a key is set twice"
    for wanted in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
                   "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_time",
                   "fs.file-max", "fs.nr_open"):
        assert wanted in keys, wanted
    missing = []
    for key, value, n in settings:
        assert all(re.fullmatch(r"\d+", part) for part in value.split()), f"line {n}: {value!r}"
        path = Path("/proc/sys") / key.replace(".", "/")
        if not path.exists():
            missing.append(key)
            continue
        current = path.read_text().split()
        assert len(current) == len(value.split()), f"{key}: {value!r} does not have the shape of {current}"
    if missing:
        print(f"keys this kernel ({os.uname().release}) lacks, not checked against /proc/sys: {missing}")
    assert len(missing) < len(settings) / 2, missing
    low, high = map(int, dict((k, v) for k, v, _ in settings)["net.ipv4.ip_local_port_range"].split())
    assert low % 2 != high % 2 and high < 49152, "keep the range out of coturn's relays, parities differ"
    assert int(dict((k, v) for k, v, _ in settings)["fs.nr_open"]) >= 65536  # the unit's LimitNOFILE


def test_sysctl_file_applies_in_a_private_network_namespace(tmp_path):
    """`sysctl -p` of the network settings, in a network namespace of their own (the host's
    stay untouched); the system-wide ones (fs.*, and net.* keys a namespace does not have)
    are only read."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("sysctl") is None:
        pytest.skip("needs root, unshare and sysctl")
    settings = sysctl_settings()
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "cd /proc/sys && find net -type f"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    namespaced = {p.replace("/", ".") for p in probe.stdout.split()}
    local = [(k, v) for k, v, _ in settings if k in namespaced]
    assert len(local) >= 8, local
    subset = tmp_path / "net.conf"
    subset.write_text("".join(f"{k} = {v}\n" for k, v in local))
    script = f"sysctl -q -p {subset} && sysctl -n " + " ".join(k for k, _ in local)
    result = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    applied = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert applied == [v for _, v in local], list(zip(local, applied, strict=False))
    global_only = [k for k, _, _ in settings if k not in namespaced]
    result = subprocess.run(["sysctl", "-n", *global_only], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    print(f"applied in a namespace: {[k for k, _ in local]}; read only (system-wide): {global_only}")


# --- journald retention


def _timespan_seconds(text: str) -> float:
    units = {"s": 1, "sec": 1, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
             "w": 604800, "week": 604800, "month": 2629800, "y": 31557600, "year": 31557600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        total += int(number) * units[unit]
    return total


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", text)
    assert m, text
    return int(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_")


def test_journald_dropin_keeps_audit_events_90_days():
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # journald keys are case-sensitive
    parser.read_string(JOURNALD_FILE.read_text())
    assert parser.sections() == ["Journal"]
    journal = dict(parser["Journal"])
    known = {"Storage", "Compress", "Seal", "SplitMode", "RateLimitIntervalSec", "RateLimitBurst", "SystemMaxUse",
             "SystemKeepFree", "SystemMaxFileSize", "SystemMaxFiles", "RuntimeMaxUse", "RuntimeKeepFree",
             "RuntimeMaxFileSize", "RuntimeMaxFiles", "MaxRetentionSec", "MaxFileSec", "ForwardToSyslog",
             "ForwardToKMsg", "ForwardToConsole", "ForwardToWall", "MaxLevelStore", "MaxLevelSyslog"}
    assert set(journal) <= known, set(journal) - known
    assert journal["Storage"] == "persistent"
    retention, file_span = _timespan_seconds(journal["MaxRetentionSec"]), _timespan_seconds(journal["MaxFileSec"])
    # A file goes when its oldest entry passes MaxRetentionSec: its newest is then
    # MaxRetentionSec - MaxFileSec old at least, and must be 90 days.
    assert retention - file_span >= 90 * 86400, (retention, file_span)
    assert _size_bytes(journal["SystemMaxUse"]) > _size_bytes(journal["SystemKeepFree"]) > 0
