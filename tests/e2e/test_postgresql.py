"""PostgreSQL end to end (issue 13): a real postgres (Debian's postgresql, initdb in a temp dir as the
`postgres` user, SCRAM passwords over TCP) in the pod, real clients (psql, psycopg 3 through libpq),
real probes, the sidecar's JSON spans and Prometheus metrics. Both ends of every connection are in
the pod: each operation makes a CLIENT span (the client's end) and a SERVER span (postgres's), and
client metrics only. The SSL negotiation (`N`), startup, SCRAM exchanges and Terminate make no span."""

from __future__ import annotations

import collections
import glob
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .inprocess import wait_for
from .pod import APPS, Pod, Sidecar, free_port
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

PASSWORD = "e2e-Pg-pw-8391"
SECRET = "secret-widget-5150"  # a literal that must never reach db.query.text unless raw
DURATION_COUNT = "db_client_operation_duration_seconds_count"


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    assert found, "the Debian package postgresql is missing: make test-deps"
    return Path(found[-1]).parent


class Server:
    """A postgres cluster in a temp dir owned by the `postgres` user, listening on 127.0.0.1:port
    (its unix socket in the temp dir): the role `app` (SCRAM password) owns the database `shop`."""

    def __init__(self, pod: Pod) -> None:
        self.bin = bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="beyla-pg-"))  # pytest's tmp dirs are root's only
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        self.as_postgres([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "admin", "-E", "UTF8",
                          "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"])
        pod.spawn(["runuser", "-u", "postgres", "--", str(self.bin / "postgres"), "-D", str(self.dir / "data"),
                   "-k", str(self.dir), "-h", "127.0.0.1", "-p", str(self.port), "-c", "fsync=off"],
                  stdout=subprocess.DEVNULL, stderr=(self.dir / "server.log").open("wb"))
        deadline = time.monotonic() + 30
        while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port)]
                             ).returncode != 0:
            assert time.monotonic() < deadline, (self.dir / "server.log").read_text()
            time.sleep(0.1)
        self.admin(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'", "CREATE DATABASE shop OWNER app")
        self.admin("CREATE TABLE orders (item text PRIMARY KEY, qty int)", "ALTER TABLE orders OWNER TO app",
                   db="shop")

    def as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def admin(self, *sql: str, db: str = "postgres") -> None:
        """Statements through the unix socket, outside the pod, before the sidecar starts."""
        argv = [str(self.bin / "psql"), "-X", "-q", "-h", str(self.dir), "-p", str(self.port), "-U", "admin", "-d", db]
        self.as_postgres([*argv, *(a for s in sql for a in ("-c", s))])

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=shop user=app password={PASSWORD}"


@pytest.fixture
def server(pod: Pod) -> Iterator[Server]:
    s = Server(pod)
    yield s
    pod.close()  # postgres first: its files go next
    shutil.rmtree(s.dir, ignore_errors=True)


def start(start_sidecar, **env: str) -> tuple[Sidecar, int]:
    prom = free_port()
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1", **env)
    return sidecar, prom


def psql(pod: Pod, server: Server, *sql: str) -> str:
    """psql in the pod over TCP (libpq sends an SSLRequest first, answered `N`), one connection."""
    argv = ["env", f"PGPASSWORD={PASSWORD}", str(server.bin / "psql"), "-X", "-A", "-t",
            f"host=127.0.0.1 port={server.port} dbname=shop user=app"]
    return pod.run([*argv, *(a for s in sql for a in ("-c", s))]).stdout.decode().strip()


def summary(spans: list[dict], kind: str, port: int) -> collections.Counter:
    """(name, operation, table, namespace, query text, batch size, error) of one kind's spans for `port`."""
    return collections.Counter(
        (s["name"], s["attributes"].get("db.operation.name"), s["attributes"].get("db.collection.name"),
         s["attributes"].get("db.namespace"), s["attributes"].get("db.query.text"),
         s["attributes"].get("db.operation.batch.size"), s["attributes"].get("error.type"))
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


def check(sidecar: Sidecar, prom: int, port: int, expected: collections.Counter,
          metrics: dict[tuple[str, str], float]) -> list[dict]:
    """Exactly the expected spans at both ends, the client metrics, no parse failure."""
    spans = sidecar.wait_spans(2 * expected.total())
    assert len(spans) == 2 * expected.total(), [(s["kind"], s["name"]) for s in spans]
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    for s in spans:
        a = s["attributes"]
        assert a["db.system.name"] == "postgresql"
        assert s["status"] == ("ERROR" if "error.type" in a else "UNSET")
        assert a.get("db.response.status_code") == a.get("error.type")
        assert (a["server.address"], a["network.transport"]) == ("127.0.0.1", "tcp")
    count = sum(metrics.values())
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= count)
    text = scrape(prom)
    assert metric_counts(text, port) == metrics
    assert sample(text, DURATION_COUNT) == count  # client side only
    assert sample(text, DURATION_COUNT, db_system_name="postgresql", db_namespace="shop") == count
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0
    assert sample(text, "beyla_sidecar_protocol_state_dropped_total") == 0
    assert PASSWORD not in sidecar.out.read_text() + sidecar.err.read_text()
    return spans


def test_psql_simple_queries(pod: Pod, server: Server, start_sidecar) -> None:
    """psql: one connection per run (SSLRequest answered `N`, startup, SCRAM, then one Q per -c, then
    Terminate): statements with literals, a missing table, a transaction in one Q (a batch),
    COPY FROM STDIN (its data's exchange carries the span) and COPY TO STDOUT."""
    sidecar, prom = start(start_sidecar)
    out = psql(pod, server, f"INSERT INTO orders (item, qty) VALUES ('{SECRET}', 3)",
               f"SELECT qty FROM orders WHERE item = '{SECRET}'",
               f"SELECT * FROM missing_table WHERE item = '{SECRET}'",  # psql goes on: its exit code is the last's
               f"BEGIN; UPDATE orders SET qty = qty + 1 WHERE item = '{SECRET}'; COMMIT")
    assert out.splitlines() == ["INSERT 0 1", "3", "BEGIN", "UPDATE 1", "COMMIT"]
    argv = ["env", f"PGPASSWORD={PASSWORD}", str(server.bin / "psql"), "-X", "-A", "-t",
            f"host=127.0.0.1 port={server.port} dbname=shop user=app",
            "-c", "COPY orders FROM STDIN", "-c", "COPY orders TO STDOUT"]
    out = pod.run(argv, input=b"copied\t5\n").stdout.decode()
    assert out.splitlines() == ["COPY 1", f"{SECRET}\t4", "copied\t5"]
    expected = collections.Counter({
        ("INSERT orders", "INSERT", "orders", "shop", "INSERT INTO orders (item, qty) VALUES (?, ?)", None, None): 1,
        ("SELECT orders", "SELECT", "orders", "shop", "SELECT qty FROM orders WHERE item = ?", None, None): 1,
        ("BATCH orders", "BATCH", "orders", "shop", "BEGIN; UPDATE orders SET qty = qty + ? WHERE item = ?; COMMIT",
         3, None): 1,
        ("SELECT missing_table", "SELECT", "missing_table", "shop", "SELECT * FROM missing_table WHERE item = ?",
         None, "42P01"): 1,
        ("COPY orders", "COPY", "orders", "shop", "COPY orders FROM STDIN", None, None): 1,
        ("COPY orders", "COPY", "orders", "shop", "COPY orders TO STDOUT", None, None): 1,
    })
    spans = check(sidecar, prom, server.port, expected, {
        ("INSERT", ""): 1, ("SELECT", ""): 1, ("BATCH", ""): 1, ("SELECT", "42P01"): 1, ("COPY", ""): 2})
    assert {s["resource"]["service.name"] for s in spans if s["kind"] == "CLIENT"} == {"psql"}
    assert SECRET not in sidecar.out.read_text()  # no literal anywhere


def test_psycopg_extended_protocol_and_prepared_statements(pod: Pod, server: Server, start_sidecar) -> None:
    """psycopg 3: Parse/Bind/Describe/Execute/Sync, a statement prepared once and executed by name
    3 times (its text remembered from the Parse), an error, executemany as one pipelined batch."""
    sidecar, prom = start(start_sidecar)
    out = pod.run([sys.executable, str(APPS / "pg_client.py"), "session", server.dsn, SECRET]).stdout.decode()
    assert out.splitlines() == ["[(7,)]"] * 3 + ["error 42P01", "done"]
    select = "SELECT qty FROM orders WHERE item = $1"
    expected = collections.Counter({
        ("INSERT orders", "INSERT", "orders", "shop", "INSERT INTO orders (item, qty) VALUES ($1, $2)", None, None): 1,
        ("PREPARE orders", "PREPARE", "orders", "shop", select, None, None): 1,
        ("SELECT orders", "SELECT", "orders", "shop", select, None, None): 3,
        ("SELECT missing_table", "SELECT", "missing_table", "shop", "SELECT * FROM missing_table WHERE item = $1",
         None, "42P01"): 1,
        ("BATCH UPDATE orders", "BATCH UPDATE", "orders", "shop", "UPDATE orders SET qty = $1 WHERE qty = $2",
         3, None): 1,
    })
    check(sidecar, prom, server.port, expected, {
        ("INSERT", ""): 1, ("PREPARE", ""): 1, ("SELECT", ""): 3, ("SELECT", "42P01"): 1, ("BATCH UPDATE", ""): 1})
    assert SECRET not in sidecar.out.read_text()


def test_raw_query_text_keeps_literals_but_never_passwords(pod: Pod, server: Server, start_sidecar) -> None:
    sidecar, prom = start(start_sidecar, BEYLA_DB_QUERY_TEXT="raw")
    psql(pod, server, f"INSERT INTO orders (item, qty) VALUES ('{SECRET}', 3)",
         f"ALTER ROLE app PASSWORD '{PASSWORD}'", "SELECT count(*) FROM orders -- a comment")
    expected = collections.Counter({
        ("INSERT orders", "INSERT", "orders", "shop", f"INSERT INTO orders (item, qty) VALUES ('{SECRET}', 3)",
         None, None): 1,
        ("ALTER", "ALTER", None, "shop", "ALTER ROLE app PASSWORD ?", None, None): 1,  # sanitized, even raw
        ("SELECT orders", "SELECT", "orders", "shop", "SELECT count(*) FROM orders", None, None): 1,
    })
    check(sidecar, prom, server.port, expected, {("INSERT", ""): 1, ("ALTER", ""): 1, ("SELECT", ""): 1})


def test_connection_opened_before_the_sidecar(pod: Pod, server: Server, start_sidecar) -> None:
    """A psycopg connection that connected and prepared its statement before the sidecar started:
    recognised from its first request (a Bind of the prepared statement), whose text was never seen
    (`EXECUTE`); the database of its startup was not seen either (no db.namespace)."""
    client = pod.spawn([sys.executable, str(APPS / "pg_client.py"), "late", server.dsn, SECRET],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline() == b"connected\n"
    sidecar, prom = start(start_sidecar)
    client.stdin.write(b"go\n")
    client.stdin.close()
    assert client.stdout.read().decode().splitlines() == ["[]", "done"]
    assert client.wait(30) == 0
    expected = collections.Counter({
        ("EXECUTE", "EXECUTE", None, None, None, None, None): 1,
        ("INSERT orders", "INSERT", "orders", None, "INSERT INTO orders (item, qty) VALUES ($1, $2)", None, None): 1,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    assert len(spans) == 2 * expected.total()
    assert summary(spans, "CLIENT", server.port) == summary(spans, "SERVER", server.port) == expected
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= 2)
    text = scrape(prom)
    assert metric_counts(text, server.port) == {("EXECUTE", ""): 1, ("INSERT", ""): 1}
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
