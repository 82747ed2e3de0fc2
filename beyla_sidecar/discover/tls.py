"""Which TLS library a mapped file is: OpenSSL (probed), or a stack we cannot see into.

Looked at once per file (device + inode), whatever the number of processes mapping it.
OpenSSL is recognised by its exported or static symbols, so libssl.so.*, an executable
with OpenSSL linked statically (symbols not stripped), and BoringSSL/LibreSSL builds that
export the same names are all probed. What is recognised but not probed:

- Go crypto/tls: a Go executable (.go.buildinfo/.gopclntab) containing "crypto/tls.";
- Java (JSSE): libjvm.so mapped;
- rustls: "rustls" in the executable's symbols or strings;
- BoringSSL without symbols (Envoy, Chromium...): the "BoringSSL" version string, no SSL_read;
- GnuTLS, NSS, wolfSSL, mbed TLS: their shared libraries by name. These are often mapped
  only as a dependency of a dependency (Debian's curl maps libgnutls through librtmp and
  uses OpenSSL), so they count only for processes that map no OpenSSL.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass, field

from ..bpf.strategy import OPENSSL_REQUIRED, OPENSSL_SYMBOLS
from .elf import Elf, ElfError, open_elf

# Shared libraries of TLS stacks we do not probe, by file name; True: an alternative to
# OpenSSL that may be mapped without being used.
_UNSUPPORTED_LIBRARIES = (
    (re.compile(r"/libjvm\.so$"), "java", False),
    (re.compile(r"/libgnutls\.so[.\d]*$"), "gnutls", True),
    (re.compile(r"/lib(nss3|ssl3)\.so[.\d]*$"), "nss", True),
    (re.compile(r"/libwolfssl\.so[.\d]*$"), "wolfssl", True),
    (re.compile(r"/libmbedtls\.so[.\d]*$"), "mbedtls", True),
)


@dataclass(frozen=True, slots=True)
class TlsFile:
    """What one file offers: OpenSSL function offsets, or the name of a stack we miss."""

    openssl: dict[str, int] = field(default_factory=dict)
    unsupported: str | None = None
    alternative: bool = False  # unsupported, but only if the process maps no OpenSSL


NOT_TLS = TlsFile()


def _has(data: mmap.mmap | bytes, needle: bytes) -> bool:
    return data.find(needle) >= 0


def _executable_stack(elf: Elf) -> str | None:
    """Statically linked TLS stacks that have no OpenSSL symbols (string search: runs once
    per executable file, at C speed over the mapping)."""
    if elf.section(".go.buildinfo") or elf.section(".gopclntab"):
        return "go crypto/tls" if _has(elf.data, b"crypto/tls.") else None
    if _has(elf.data, b"rustls"):
        return "rustls"
    if _has(elf.data, b"BoringSSL"):
        return "boringssl without symbols"
    return None


def classify(path: str, display_path: str, is_executable: bool) -> TlsFile:
    """Classify the file at `path` (a host-reachable path); `display_path` is the process's
    own path of it (matched against library names)."""
    for pattern, stack, alternative in _UNSUPPORTED_LIBRARIES:
        if pattern.search(display_path):
            return TlsFile(unsupported=stack, alternative=alternative)
    try:
        with open_elf(path) as elf:
            offsets = elf.function_offsets(OPENSSL_SYMBOLS)
            if all(name in offsets for name in OPENSSL_REQUIRED):
                return TlsFile(openssl=offsets)
            if is_executable:
                stack = _executable_stack(elf)
                if stack:
                    return TlsFile(unsupported=stack)
    except (OSError, ElfError, ValueError):
        pass
    return NOT_TLS
