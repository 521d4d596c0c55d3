"""DATABASE_URL with TLS: sslmode=verify-full against a CA and server certificate made here.

The embedded server (pgserver) is built without OpenSSL, so two TLS servers stand in for it:

* a real PostgreSQL with `ssl = on` and only `hostssl` lines in pg_hba.conf, started from the
  system's binaries when a TLS-capable build is installed (skipped otherwise): the handshake,
  the certificate checks and the plaintext refusal are the server's own;
* a TLS terminator in front of the embedded server that speaks Postgres' SSLRequest handshake
  (as a TLS-terminating proxy in front of a managed database does), so that `docpipe migrate`
  and the worker's and the API's pools run over verify-full against pgvector.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from docpipe_operator.model import parse_spec
from docpipe_operator.observation import url_with_ca
from docpipe_operator.rendering import render_pod_template
from docpipe_operator.telemetry import QueueReader
from docpipe_queue import jobs
from docpipe_queue.database import WORKER_SESSION, DatabaseTLSError, connect, create_pool
from tests.support.ports import free_port

# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca(name: str, path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    cert_path: Path,
    key_path: Path,
    *,
    server: bool,
) -> None:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca("docpipe test CA", d / "ca.pem")
    _ca("some other CA", d / "other-ca.pem")
    _leaf(ca, "localhost", d / "server.pem", d / "server.key", server=True)
    _leaf(ca, "postgres", d / "client.pem", d / "client.key", server=False)
    return Pki(
        ca=d / "ca.pem",
        other_ca=d / "other-ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


def tls_url(port: int, database: str, **params: str | Path) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://postgres@localhost:{port}/{database}?{query}"


# --- a real PostgreSQL with ssl = on ------------------------------------------------------------


def _tls_capable_postgres() -> Path | None:
    """The bin directory of an installed PostgreSQL built with OpenSSL, if any."""
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        config = bindir / "pg_config"
        if not (bindir / "postgres").exists() or not config.exists():
            continue
        try:
            configure = subprocess.run(
                [config, "--configure"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except OSError:
            continue
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return bindir
    return None


@dataclass(frozen=True)
class TlsPostgres:
    port: int


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    bindir = _tls_capable_postgres()
    if bindir is None:
        pytest.skip("no PostgreSQL built with OpenSSL installed (pgserver's has no TLS)")
    run_as: dict[str, object] = {}
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:  # postgres refuses to run as root: use pgserver's system user
        import pwd

        from pgserver.utils import ensure_user_exists

        ensure_user_exists("pgserver")
        entry = pwd.getpwnam("pgserver")
        owner = (entry.pw_uid, entry.pw_gid)
        run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
    root = Path(tempfile.mkdtemp(prefix="docpipe-tls-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir(mode=0o700)
    if owner:
        os.chown(root, *owner)
        os.chown(data, *owner)
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "utf8"],
        check=True, capture_output=True, timeout=60, **run_as,  # type: ignore[call-overload]
    )  # fmt: skip
    for source, name in ((pki.server_cert, "server.pem"), (pki.server_key, "server.key")):
        shutil.copy(source, data / name)
        (data / name).chmod(0o600)
        if owner:
            os.chown(data / name, *owner)
    shutil.copy(pki.ca, data / "ca.pem")
    if owner:
        os.chown(data / "ca.pem", *owner)
    port = free_port()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n"
            "ssl_ca_file = 'ca.pem'\n"
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data}'\n"
            "fsync = off\nshared_buffers = 16MB\n"
        )
    # TLS or nothing over TCP; the `clientcert` database also wants a client certificate.
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl clientcert all 127.0.0.1/32 trust clientcert=verify-full\n"
        "hostssl all all 127.0.0.1/32 trust\n"
    )
    subprocess.run(
        [bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "30", "start"],
        check=True, capture_output=True, timeout=60, **run_as,  # type: ignore[call-overload]
    )  # fmt: skip
    try:
        subprocess.run(
            [bindir / "psql", "-h", data, "-p", str(port), "-U", "postgres", "-qc",
             "create database clientcert"],
            check=True, capture_output=True, timeout=30, **run_as,  # type: ignore[call-overload]
        )  # fmt: skip
        yield TlsPostgres(port)
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            check=False, capture_output=True, timeout=60, **run_as,  # type: ignore[call-overload]
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


async def test_verify_full_with_the_right_ca_connects(pki: Pki, tls_postgres: TlsPostgres) -> None:
    url = tls_url(tls_postgres.port, "postgres", sslmode="verify-full", sslrootcert=pki.ca)
    conn = await connect(url)
    try:
        assert await conn.fetchval("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    finally:
        await conn.close()
    pool = await create_pool(url, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    try:
        assert await pool.fetchval("show synchronous_commit") == "off"
    finally:
        await pool.close()


async def test_a_wrong_ca_is_refused_naming_the_ca_file(
    pki: Pki, tls_postgres: TlsPostgres
) -> None:
    url = tls_url(tls_postgres.port, "postgres", sslmode="verify-full", sslrootcert=pki.other_ca)
    with pytest.raises(DatabaseTLSError) as refused:
        await create_pool(url, min_size=1, max_size=1)
    message = str(refused.value)
    assert "failed verification" in message
    assert str(pki.other_ca) in message


async def test_verify_full_checks_the_host_name(pki: Pki, tls_postgres: TlsPostgres) -> None:
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2 (still the loopback).
    url = tls_url(tls_postgres.port, "postgres", sslmode="verify-full", sslrootcert=pki.ca)
    url = url.replace("@localhost:", "@127.0.0.2:")
    with pytest.raises((DatabaseTLSError, OSError)):
        await connect(url)


async def test_plaintext_is_refused_by_a_server_that_requires_tls(
    tls_postgres: TlsPostgres,
) -> None:
    url = tls_url(tls_postgres.port, "postgres", sslmode="disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await connect(url)


async def _connect_and_close(url: str) -> None:
    conn = await connect(url)
    await conn.close()


async def test_client_certificate(pki: Pki, tls_postgres: TlsPostgres) -> None:
    base: dict[str, str | Path] = {"sslmode": "verify-full", "sslrootcert": pki.ca}
    without = tls_url(tls_postgres.port, "clientcert", **base)
    with pytest.raises((asyncpg.PostgresError, ConnectionError, ssl.SSLError)):
        await _connect_and_close(without)
    url = tls_url(
        tls_postgres.port, "clientcert", **base, sslcert=pki.client_cert, sslkey=pki.client_key
    )
    conn = await connect(url)
    try:
        assert await conn.fetchval("select client_dn from pg_stat_ssl where pid = pg_backend_pid()")
    finally:
        await conn.close()


# --- missing files: named before any connection is tried ----------------------------------------


def _docpipe(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "docpipe_cli.main", *args],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_missing_or_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    url = tls_url(5432, "postgres", sslmode="verify-full", sslrootcert=missing)
    with pytest.raises(DatabaseTLSError, match=f"sslrootcert={missing}: .* does not exist"):
        await create_pool(url)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    url = tls_url(5432, "postgres", sslmode="verify-full", sslrootcert=garbage)
    with pytest.raises(DatabaseTLSError, match="holds no PEM certificate"):
        await connect(url)
    missing_key = tmp_path / "client.key"
    url = tls_url(5432, "postgres", sslmode="verify-full", sslkey=missing_key)
    with pytest.raises(DatabaseTLSError, match="client key file does not exist"):
        await connect(url)

    result = _docpipe("migrate", url=tls_url(5432, "postgres", sslrootcert=missing))
    assert result.returncode == 1
    assert f"sslrootcert={missing}" in result.stderr
    assert "Traceback" not in result.stderr


# --- docpipe over TLS to pgvector: a TLS terminator in front of the embedded server ----------

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _error_response(message: str) -> bytes:
    fields = b"".join(
        code + text.encode() + b"\0"
        for code, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


class TlsTerminator:
    """Accepts Postgres clients on 127.0.0.1 with TLS only; relays to a Unix socket."""

    def __init__(self, upstream: str, context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.context = context
        self.port = free_port()
        self.tls_sessions = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TlsTerminator:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code == GSSENC_REQUEST:
                    writer.write(b"N")
                    continue
                if code != SSL_REQUEST:
                    await reader.readexactly(length - 8)
                    writer.write(
                        _error_response(
                            'no pg_hba.conf entry for host "127.0.0.1", user "postgres", '
                            "no encryption"
                        )
                    )
                    await writer.drain()
                    return
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.context)
                self.tls_sessions += 1
                break
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
def terminator(pki: Pki, pg_server_url: str) -> Iterator[TlsTerminator]:
    parts = urlsplit(pg_server_url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    socket = f"{query['host']}/.s.PGSQL.{parts.port or query.get('port', 5432)}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    with TlsTerminator(socket, context) as proxy:
        yield proxy


async def test_docpipe_migrates_and_pools_work_over_verify_full(
    pki: Pki, terminator: TlsTerminator, empty_database_url: str
) -> None:
    database = urlsplit(empty_database_url).path.lstrip("/")
    url = tls_url(terminator.port, database, sslmode="verify-full", sslrootcert=pki.ca)

    migrated = await asyncio.to_thread(_docpipe, "migrate", url=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_schema" in migrated.stdout

    worker = await create_pool(url, min_size=1, max_size=2, server_settings=WORKER_SESSION)
    api = await create_pool(
        url, min_size=1, max_size=2, server_settings={"hnsw.ef_search": "40"}, reset_session=False
    )
    try:
        assert await worker.fetchval("select count(*) from docpipe.jobs") == 0
        assert await api.fetchval("select vector_dims($1::vector)", [1.0, 2.0]) == 2
    finally:
        await worker.close()
        await api.close()
    assert terminator.tls_sessions >= 3

    wrong = tls_url(terminator.port, database, sslmode="verify-full", sslrootcert=pki.other_ca)
    refused = await asyncio.to_thread(_docpipe, "jobs", "stats", url=wrong)
    assert refused.returncode == 1
    assert "failed verification" in refused.stderr
    assert str(pki.other_ca) in refused.stderr

    plain = tls_url(terminator.port, database, sslmode="disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await connect(plain)


# --- the CA of spec.database.caSecretRef: mounted in the workers, used by the operator ----------


def _worker_ca_env(mounted: Path, ca: Path) -> dict[str, str]:
    """The PGSSL* variables of a worker pod the operator renders with a database CA, with the
    kubelet's part done here: the Secret's key written where the pod mounts it (under `mounted`)."""
    spec = parse_spec(
        {
            "worker": {"image": "docpipe:1"},
            "database": {
                "urlSecretRef": {"name": "db", "key": "url"},
                "caSecretRef": {"name": "db-ca", "key": "ca.crt"},
            },
            "embedder": {"baseUrl": "http://mocks/v1"},
        }
    )
    pod = render_pod_template("docs", spec)["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "postgres-ca"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    folder = mounted / mount["mountPath"].lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    for item in volume["secret"]["items"]:
        shutil.copy(ca, folder / item["path"])
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("PGSSL")}
    env["PGSSLROOTCERT"] = str(mounted / env["PGSSLROOTCERT"].lstrip("/"))
    return env


async def test_a_worker_pod_with_the_database_ca_mounted_verifies_the_server(
    pki: Pki, terminator: TlsTerminator, database_url: str, tmp_path: Path
) -> None:
    database = urlsplit(database_url).path.lstrip("/")
    # DATABASE_URL says nothing of TLS: the pod's variables turn verify-full on.
    url = f"postgresql://postgres@localhost:{terminator.port}/{database}"
    env = _worker_ca_env(tmp_path / "right", pki.ca)
    assert env["PGSSLMODE"] == "verify-full"
    before = terminator.tls_sessions

    def docpipe(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "docpipe_cli.main", "jobs", "stats"],
            env={**os.environ, "DATABASE_URL": url, **variables},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = await asyncio.to_thread(docpipe, env)
    assert done.returncode == 0, done.stderr
    assert terminator.tls_sessions > before

    refused = await asyncio.to_thread(docpipe, _worker_ca_env(tmp_path / "wrong", pki.other_ca))
    assert refused.returncode == 1
    assert "failed verification" in refused.stderr


async def test_the_operator_reads_the_queue_over_verify_full_with_the_pipelines_ca(
    pki: Pki, terminator: TlsTerminator, database_url: str, pool: asyncpg.Pool
) -> None:
    await jobs.enqueue(pool, [jobs.NewJob(pipeline="docs") for _ in range(3)])
    database = urlsplit(database_url).path.lstrip("/")
    url = f"postgresql://postgres@localhost:{terminator.port}/{database}"
    reader = QueueReader()
    try:
        before = terminator.tls_sessions
        queue = await reader.read(url_with_ca(url, str(pki.ca)), "docs", timeout_s=10)
        assert queue.ready_jobs == 3
        assert terminator.tls_sessions > before
        with pytest.raises(ssl.SSLCertVerificationError):
            await reader.read(url_with_ca(url, str(pki.other_ca)), "docs", timeout_s=10)
    finally:
        await reader.close()
