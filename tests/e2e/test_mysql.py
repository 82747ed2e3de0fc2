"""MySQL/MariaDB end to end (issue 13): a real MariaDB server (Debian mariadb-server, a fresh datadir
per test, run as Debian's `mysql` user) in the pod and real clients (the mariadb CLI, PyMySQL's text
protocol, mysql-connector-python's server-side prepared statements), real probes, the sidecar's
JSON spans and Prometheus metrics. Both ends of every connection are in the pod: each operation
makes a CLIENT span (the client's end) and a SERVER span (mariadbd's), and client metrics only.
The handshake, COM_STMT_RESET, COM_STMT_CLOSE and COM_QUIT are housekeeping: no span."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .inprocess import wait_for
from .pod import APPS, Pod, Sidecar, free_port, wait_port
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

PASSWORD = "e2e-Secr3t-pw"
SECRET = "Secret-Item-42"  # a literal the app writes: never in a sanitized span
DURATION_COUNT = "db_client_operation_duration_seconds_count"
SETUP = f"""
CREATE DATABASE shop;
CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(64));
INSERT INTO shop.orders VALUES (1, 'book'), (2, 'pen'), (3, 'cup');
CREATE USER app@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';
GRANT ALL ON shop.* TO app@'127.0.0.1';
"""


class MariaDB:
    """A mariadbd in the pod on 127.0.0.1:port, with database `shop` and user `app`."""

    def __init__(self, pod: Pod, base: Path, tls: tuple[Path, Path] | None = None) -> None:
        assert shutil.which("mariadbd") and shutil.which("mariadb-install-db") and shutil.which("mariadb"), \
            "the Debian packages mariadb-server and mariadb-client are missing: make test-deps"
        self.port = free_port()
        data, tmp = base / "data", base / "tmp"
        for d in (data, tmp):
            d.mkdir()
            shutil.chown(d, "mysql", "mysql")
        self.socket = tmp / "mysqld.sock"
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--tmpdir={tmp}",
                        "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        argv = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--tmpdir={tmp}", "--user=mysql",
                f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
                f"--pid-file={tmp / 'mysqld.pid'}", "--skip-name-resolve", "--innodb-buffer-pool-size=16M",
                f"--log-error={base / 'mariadbd.log'}"]
        if tls is not None:
            argv += [f"--ssl-cert={tls[0]}", f"--ssl-key={tls[1]}"]
        self.proc = pod.spawn(argv)
        self.pod = pod
        wait_port(self.port, timeout=60)
        # over the Unix socket, before any sidecar runs: not traced
        self.sql(SETUP)

    def sql(self, script: str) -> None:
        subprocess.run(["mariadb", "--no-defaults", "-S", str(self.socket), "-u", "root"], input=script.encode(),
                       check=True, capture_output=True, timeout=60)

    def cli(self, script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """The mariadb CLI in the pod, over TCP, one connection; the exit status is the caller's business."""
        return subprocess.run(["nsenter", "--target", str(self.pod.init_pid), "--pid", "--mount", "--",
                               "mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(self.port),
                               "-u", "app", f"-p{PASSWORD}", *args, "-e", script],
                              capture_output=True, timeout=60)

    def client(self, driver: str, *args: str) -> list[str]:
        """tests/e2e/apps/mysql_client.py in the pod: its output lines."""
        out = self.pod.run([sys.executable, str(APPS / "mysql_client.py"), driver, str(self.port), PASSWORD, SECRET,
                            *args])
        return out.stdout.decode().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(Pod.payload_pid(self.proc), signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def mariadb_dir() -> Iterator[Path]:
    """A directory Debian's `mysql` user can reach (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="beyla-mariadb-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mariadb(pod: Pod, mariadb_dir: Path) -> Iterator[MariaDB]:
    server = MariaDB(pod, mariadb_dir)
    yield server
    server.stop()


def start(start_sidecar: Callable[..., Sidecar], **env: str) -> tuple[Sidecar, int]:
    prom = free_port()
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1", **env)
    return sidecar, prom


Summary = tuple[str, "str | None", "str | None", "str | None", "str | None"]


def summary(spans: list[dict], kind: str, port: int) -> collections.Counter[Summary]:
    """(name, table, namespace, query text, error) of the spans of one kind for `port`."""
    return collections.Counter(
        (s["name"], s["attributes"].get("db.collection.name"), s["attributes"].get("db.namespace"),
         s["attributes"].get("db.query.text"), s["attributes"].get("error.type"))
        for s in spans if s["kind"] == kind and s["attributes"]["server.port"] == port)


def metric_counts(text: str, port: int) -> dict[tuple[str, str], float]:
    """db.client.operation.duration counts per (operation, error) of the client spans to `port`."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith(DURATION_COUNT + "{") and f'server_port="{port}"' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split('",'))
            key = (labels["db_operation_name"].strip('"'), labels.get("error_type", "").strip('"'))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def check_spans(spans: list[dict], port: int, expected: collections.Counter[Summary]) -> None:
    """Both ends of every operation, alike; attributes every span has."""
    assert len(spans) == 2 * expected.total()
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    for s in spans:
        a = s["attributes"]
        error = a.get("error.type")
        assert a["db.system.name"] == "mysql"
        assert s["name"].split(" ")[0] == a["db.operation.name"]
        assert s["status"] == ("ERROR" if error else "UNSET")
        assert a.get("db.response.status_code") == error
        assert (a["server.address"], a["network.transport"]) == ("127.0.0.1", "tcp")
        assert SECRET not in str(a) and PASSWORD not in str(a)


def check_metrics(prom: int, port: int, expected: collections.Counter[Summary]) -> str:
    """One client metric count per operation; none for the server's side; no parse failure."""
    counts: dict[tuple[str, str], float] = {}
    for name, _, _, _, error in expected.elements():
        key = (name.split(" ")[0], error or "")
        counts[key] = counts.get(key, 0) + 1
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= expected.total())
    text = scrape(prom)
    assert metric_counts(text, port) == counts
    assert sample(text, DURATION_COUNT) == expected.total()
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0
    assert sample(text, "beyla_sidecar_protocol_state_dropped_total", protocol="mysql") == 0
    return text


def test_mariadb_cli_text_protocol(pod: Pod, start_sidecar, mariadb: MariaDB) -> None:
    """Two CLI connections: with a database in the handshake (INSERT, SELECT, UPDATE), and without
    one, then `use shop` (COM_INIT_DB, after the CLI's SELECT DATABASE()) and a missing table."""
    sidecar, prom = start(start_sidecar)
    first = mariadb.cli(f"INSERT INTO orders VALUES (4, '{SECRET}'); SELECT item FROM orders WHERE id = 4; "
                        "UPDATE orders SET item = 'mug' WHERE id = 3", "shop")
    assert first.returncode == 0 and SECRET in first.stdout.decode(), first.stderr
    second = mariadb.cli("use shop; SELECT COUNT(*) FROM nope")
    assert second.returncode == 1 and b"ERROR 1146 (42S02)" in second.stderr
    expected = collections.Counter({
        ("INSERT orders", "orders", "shop", "INSERT INTO orders VALUES (?, ?)", None): 1,
        ("SELECT orders", "orders", "shop", "SELECT item FROM orders WHERE id = ?", None): 1,
        ("UPDATE orders", "orders", "shop", "UPDATE orders SET item = ? WHERE id = ?", None): 1,
        ("SELECT", None, None, "SELECT DATABASE()", None): 1,
        ("USE", None, None, None, None): 1,
        ("SELECT nope", "nope", "shop", "SELECT COUNT(*) FROM nope", "1146"): 1,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    check_spans(spans, mariadb.port, expected)
    assert {s["resource"]["service.name"] for s in spans if s["kind"] == "CLIENT"} == {"mariadb"}
    text = check_metrics(prom, mariadb.port, expected)
    assert sample(text, DURATION_COUNT, db_operation_name="SELECT", db_namespace="shop", db_system_name="mysql",
                  db_response_status_code="1146", error_type="1146") == 1


def test_pymysql_text_protocol_sanitized(pod: Pod, start_sidecar, mariadb: MariaDB) -> None:
    """PyMySQL puts the values in the query text: by default no literal leaves the sidecar."""
    sidecar, prom = start(start_sidecar)
    lines = mariadb.client("pymysql")
    assert lines == [f"(('{SECRET}',),)", "error 1146"]
    expected = collections.Counter({
        ("SET", None, "shop", "SET NAMES utf8mb4", None): 1,
        ("SET", None, "shop", "SET AUTOCOMMIT = ?", None): 1,
        ("INSERT orders", "orders", "shop", "INSERT INTO orders (id, item) VALUES (?, ?)", None): 1,
        ("SELECT orders", "orders", "shop", "SELECT item FROM orders WHERE id = ?", None): 1,
        ("COMMIT", None, "shop", "COMMIT", None): 1,
        ("SELECT missing_table", "missing_table", "shop", "SELECT * FROM missing_table WHERE id = ?", "1146"): 1,
        ("PING", None, "shop", None, None): 1,
        ("USE", None, "shop", None, None): 1,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    check_spans(spans, mariadb.port, expected)
    check_metrics(prom, mariadb.port, expected)
    assert SECRET not in sidecar.out.read_text() + sidecar.err.read_text()


def test_raw_query_text_keeps_literals(pod: Pod, start_sidecar, mariadb: MariaDB) -> None:
    sidecar, _ = start(start_sidecar, BEYLA_DB_QUERY_TEXT="raw")
    mariadb.client("pymysql")
    spans = sidecar.wait_spans(2 * 8)
    texts = {s["attributes"].get("db.query.text") for s in spans if s["kind"] == "CLIENT"}
    assert f"INSERT INTO orders (id, item) VALUES (10, '{SECRET}')" in texts
    assert "SELECT * FROM missing_table WHERE id = 7" in texts
    assert len(spans) == 2 * 8


def test_connector_server_side_prepared_statements(pod: Pod, start_sidecar, mariadb: MariaDB) -> None:
    """mysql-connector-python with cursor(prepared=True): each EXECUTE is described by the statement
    its PREPARE named (the id is in the server's PREPARE_OK); STMT_RESET and STMT_CLOSE make no span."""
    sidecar, prom = start(start_sidecar)
    lines = mariadb.client("connector")
    assert lines == ["[('book',)]", "[('pen',)]", "[('cup',)]", "error 1146"]
    select = "SELECT item FROM orders WHERE id = ?"
    insert = "INSERT INTO orders (id, item) VALUES (?, ?)"
    expected = collections.Counter({
        ("SET", None, "shop", "SET NAMES ? COLLATE ?", None): 1,
        ("SET", None, "shop", "SET @@session.autocommit = OFF", None): 1,
        ("PING", None, "shop", None, None): 1,
        ("PREPARE orders", "orders", "shop", select, None): 1,
        ("SELECT orders", "orders", "shop", select, None): 3,
        ("PREPARE orders", "orders", "shop", insert, None): 1,
        ("INSERT orders", "orders", "shop", insert, None): 1,
        ("PREPARE missing_table", "missing_table", "shop", "SELECT * FROM missing_table WHERE id = ?", "1146"): 1,
        ("COMMIT", None, "shop", "COMMIT", None): 1,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    check_spans(spans, mariadb.port, expected)
    check_metrics(prom, mariadb.port, expected)


def test_tls_through_the_openssl_probes(pod: Pod, start_sidecar, mariadb_dir: Path) -> None:
    """PyMySQL over TLS (an SSLRequest, then TLS: Python's ssl and mariadbd both use OpenSSL): the
    TLS probes give the plaintext, so the spans are the same as without TLS, at both ends."""
    cert, key = mariadb_dir / "cert.pem", mariadb_dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    shutil.chown(key, "mysql")
    server = MariaDB(pod, mariadb_dir, tls=(cert, key))
    sidecar, prom = start(start_sidecar)
    lines = server.client("pymysql", str(cert))
    assert lines[:2] == [f"(('{SECRET}',),)", "error 1146"] and "TLSv1.3" in lines[2]
    expected = collections.Counter({
        ("SET", None, "shop", "SET NAMES utf8mb4", None): 1,
        ("SET", None, "shop", "SET AUTOCOMMIT = ?", None): 1,
        ("INSERT orders", "orders", "shop", "INSERT INTO orders (id, item) VALUES (?, ?)", None): 1,
        ("SELECT orders", "orders", "shop", "SELECT item FROM orders WHERE id = ?", None): 1,
        ("COMMIT", None, "shop", "COMMIT", None): 1,
        ("SELECT missing_table", "missing_table", "shop", "SELECT * FROM missing_table WHERE id = ?", "1146"): 1,
        ("PING", None, "shop", None, None): 1,
        ("USE", None, "shop", None, None): 1,
        ("SHOW", None, "shop", "SHOW STATUS LIKE ?", None): 1,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    server.stop()
    check_spans(spans, server.port, expected)
    check_metrics(prom, server.port, expected)
