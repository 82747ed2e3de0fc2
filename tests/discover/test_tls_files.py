"""ELF symbol lookup and TLS library classification on real files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.bpf.strategy import OPENSSL_SYMBOLS
from beyla_sidecar.discover.elf import ElfError, open_elf
from beyla_sidecar.discover.maps import FileCache
from beyla_sidecar.discover.tls import NOT_TLS, TlsFile, classify

LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
STATIC_C = Path(__file__).resolve().parents[1] / "e2e" / "apps" / "static_client.c"


def nm_addresses(path: Path, dynamic: bool) -> dict[str, int]:
    argv = ["nm", "-D", str(path)] if dynamic else ["nm", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T":
            found[parts[2].split("@")[0]] = int(parts[0], 16)
    return {name: found[name] for name in OPENSSL_SYMBOLS if name in found}


def test_libssl_offsets_match_nm() -> None:
    with open_elf(str(LIBSSL)) as elf:
        offsets = elf.function_offsets(OPENSSL_SYMBOLS)
        # libssl's text segment has vaddr == file offset: nm's addresses are the offsets
        assert offsets == nm_addresses(LIBSSL, dynamic=True) and len(offsets) == 5
    assert classify(str(LIBSSL), str(LIBSSL), False).openssl == offsets


def test_statically_linked_openssl_is_found_in_the_executable(tmp_path: Path) -> None:
    exe = tmp_path / "static_client"
    subprocess.run(["cc", "-o", exe, STATIC_C, "-static", "-lssl", "-lcrypto", "-lpthread"],
                   check=True, capture_output=True)
    found = classify(str(exe), str(exe), True)
    with open_elf(str(exe)) as elf:
        expected = {name: elf.file_offset(addr) for name, addr in nm_addresses(exe, dynamic=False).items()}
    assert found.openssl == expected and {"SSL_read", "SSL_write"} <= expected.keys()
    shutil.copy(exe, tmp_path / "stripped")
    subprocess.run(["strip", tmp_path / "stripped"], check=True)
    assert classify(str(tmp_path / "stripped"), "/app/stripped", True) == NOT_TLS  # nothing to attach to


def fake_executable(tmp_path: Path, name: str, section: str | None, text: bytes) -> Path:
    """/bin/true with an extra section holding `text` (a stand-in for a Go or Rust binary)."""
    out = tmp_path / name
    blob = tmp_path / f"{name}.blob"
    blob.write_bytes(text)
    subprocess.run(["objcopy", "--add-section", f"{section or '.note.test'}={blob}", "/bin/true", out],
                   check=True, capture_output=True)
    return out


@pytest.mark.parametrize(("section", "text", "stack"), [
    (".go.buildinfo", b"crypto/tls.(*Conn).Write", "go crypto/tls"),
    (".go.buildinfo", b"net/http without TLS", None),
    (None, b"rustls-0.23.0/src/conn.rs", "rustls"),
    (None, b"OpenSSL 1.1.1 (compatible; BoringSSL)", "boringssl without symbols"),
    (None, b"nothing to see", None),
])
def test_unsupported_stacks_in_executables(tmp_path: Path, section: str | None, text: bytes,
                                            stack: str | None) -> None:
    exe = fake_executable(tmp_path, "app", section, text)
    assert classify(str(exe), "/app/app", True).unsupported == stack
    assert classify(str(exe), "/usr/lib/libapp.so", False).unsupported is None  # only executables


def test_unsupported_shared_libraries_by_name() -> None:
    java = classify("/nonexistent", "/usr/lib/jvm/java-17/lib/server/libjvm.so", False)
    gnutls = classify("/nonexistent", "/usr/lib/x86_64-linux-gnu/libgnutls.so.30", False)
    assert (java.unsupported, java.alternative) == ("java", False)
    assert (gnutls.unsupported, gnutls.alternative) == ("gnutls", True)  # curl maps it, uses OpenSSL


def test_not_elf(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n" * 10)
    with pytest.raises(ElfError):
        with open_elf(str(tmp_path / "script")):
            pass
    assert classify(str(tmp_path / "script"), "/script", True) == NOT_TLS


def test_files_are_classified_once_per_id() -> None:
    calls = []
    files: FileCache[TlsFile] = FileCache(lambda path, shown, exe: calls.append(path) or NOT_TLS)
    for path in ("/proc/1/root/lib/x.so", "/proc/2/root/lib/x.so"):
        assert files.get((1, 42), path, "/lib/x.so", False) is NOT_TLS
    assert calls == ["/proc/1/root/lib/x.so"] and len(files) == 1
