"""TLS material of the webhook: a CA and a serving certificate generated at start-up, or files.

Generated mode: each webhook replica makes its own small CA (ECDSA P-256) and a serving certificate
signed by it for the Service's DNS names; the CA is what goes into the webhook configuration's
`caBundle` (cabundle.py appends it there, next to the other replicas' CAs).

File mode (cert-manager): the certificate and key are read from files and re-read when they change,
so a renewed Secret is picked up without a restart.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger()

VALIDITY = dt.timedelta(days=365)
# TLS 1.2 suites: forward-secret AEAD only (Python's default list also allows two CBC-SHA2 suites).
# TLS 1.3 suites are all AEAD and not set by this list.
TLS12_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class GeneratedTLS:
    ca_pem: bytes
    cert_pem: bytes  # serving certificate followed by the CA
    key_pem: bytes


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def generate(dns_names: list[str], ip_addresses: tuple[str, ...] = ("127.0.0.1",),
             validity: dt.timedelta = VALIDITY) -> GeneratedTLS:
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)  # clock skew between nodes
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"beyla-sidecar webhook CA {now:%Y%m%dT%H%M%S}")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(not_before).not_valid_after(now + validity)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return GeneratedTLS(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem) + ca.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def context_from_pem(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """An SSLContext from PEM bytes (ssl only loads files: a private temporary directory, removed)."""
    with tempfile.TemporaryDirectory(prefix="beyla-webhook-") as tmp:
        cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return server_context(cert_path, key_path)


class ContextSource:
    """The current server SSLContext; in file mode rebuilt when the files change (checked every few s)."""

    def __init__(self, ctx: ssl.SSLContext, cert_file: str = "", key_file: str = "", check_every: float = 5.0):
        self._ctx = ctx
        self._files = (cert_file, key_file)
        self._check_every = check_every
        self._stamp = self._mtimes() if cert_file else None
        self._next_check = time.monotonic() + check_every
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, cert_file: str, key_file: str) -> ContextSource:
        return cls(server_context(cert_file, key_file), cert_file, key_file)

    def _mtimes(self) -> tuple[float, float] | None:
        try:
            return (os.stat(self._files[0]).st_mtime, os.stat(self._files[1]).st_mtime)
        except OSError:
            return None

    def get(self) -> ssl.SSLContext:
        if not self._files[0] or time.monotonic() < self._next_check:
            return self._ctx
        with self._lock:
            self._next_check = time.monotonic() + self._check_every
            stamp = self._mtimes()
            if stamp is not None and stamp != self._stamp:
                try:
                    self._ctx = server_context(*self._files)
                    self._stamp = stamp
                    log.info("webhook certificate reloaded", cert=self._files[0])
                except (OSError, ssl.SSLError) as exc:
                    # Half-written renewal: keep serving the old pair, retry next time.
                    log.warning("cannot reload the webhook certificate", cert=self._files[0], error=str(exc))
            return self._ctx
