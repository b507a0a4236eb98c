"""Native TLS: the certificate chain and key as a reloadable server context.

TLS 1.2 minimum, AEAD ciphers only, ALPN ``http/1.1`` only (offering h2 would
break the WebSocket upgrade, since Twisted then speaks HTTP/2).

Session resumption is on (docs/performance.md, "TLS session resumption"): a client
that comes back (a reconnect, a second connection of a session) resumes with a
ticket (TLS 1.2 and 1.3) or a TLS 1.2 session id instead of a full handshake. The
ticket keys and the session cache belong to the context: random, in memory, for
the process's lifetime. A reload that finds the certificate and key unchanged keeps
the context (tickets stay valid); a renewed certificate makes a new context, which
rotates the keys. Tickets are per process: with several processes on one port
(reuse_port) or after a restart, a ticket another process issued falls back to a
full handshake, never to a failure.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from zope.interface import implementer

from .config import ConfigError

CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
)


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"invalid setting {key}: cannot read {path}: {e.strerror}") from None


def load_certificate_options(cert_path: str, key_path: str) -> CertificateOptions:
    """Read and check the chain and key; raise ConfigError naming the bad file."""
    chain_pem = _read(cert_path, "tls_cert")
    key_pem = _read(key_path, "tls_key")
    blocks = [b"-----BEGIN CERTIFICATE-----" + part for part in chain_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    if not blocks:
        raise ConfigError(f"invalid setting tls_cert: {cert_path} holds no PEM certificate")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error:
        raise ConfigError(f"invalid setting tls_cert: {cert_path} holds a malformed certificate") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ConfigError(f"invalid setting tls_key: {key_path} holds no readable PEM private key") from None
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(chain[0])
        context.use_privatekey(key)
        context.check_privatekey()
    except SSL.Error:
        message = f"invalid setting tls_key: {key_path} does not match the certificate in {cert_path}"
        raise ConfigError(message) from None
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=CIPHERS,
        acceptableProtocols=[b"http/1.1"],
        # resumption: the server-side session cache (TLS 1.2 session ids, TLS 1.3
        # stateful tickets) and stateless tickets (TLS 1.2 and 1.3)
        enableSessions=True,
        enableSessionTickets=True,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Hands each new connection the current context; ``load()`` swaps it.

    Open connections keep the context they were made with.
    """

    def __init__(self, cert_path: str, key_path: str):
        self._context: SSL.Context | None = None  # set by load() below
        self._loaded: tuple | None = None  # (paths, file contents) of the current context
        self.load(cert_path, key_path)

    def load(self, cert_path: str, key_path: str) -> None:
        """A new context, unless the files are the ones the current one was made
        from: keeping it keeps its session cache and ticket keys (resumption across
        a reload that changes nothing here)."""
        loaded = (cert_path, key_path, _read(cert_path, "tls_cert"), _read(key_path, "tls_key"))
        if loaded == self._loaded:
            return
        self._context = load_certificate_options(cert_path, key_path).getContext()
        self._loaded = loaded

    def apply(self, settings) -> None:
        """Reload: re-read the (possibly renewed) certificate and key."""
        if settings.tls_enabled:
            self.load(settings.tls_cert, settings.tls_key)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self._context, None)
