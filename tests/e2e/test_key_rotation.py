"""`docpipe api` as a real process takes a rotated JWT key from its mounted file without a restart:
the HS256 secret file and the RS256 public key file are replaced (atomically, as Kubernetes swaps
a Secret volume's files) while the API runs; tokens of the new key work at once, tokens of the old
key keep working through the overlap and are refused after it, and the process is the same one."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from docpipe_api.auth import mint_token
from tests.e2e.test_worker_process import readyz, stop, wait_until
from tests.support.ports import free_port

CHECK_S = 0.5
OVERLAP_S = 4.0


def replace(path: Path, content: bytes) -> None:
    """Write the file's new content beside it and rename it over: a new inode, never half read."""
    staged = path.with_name(f".{path.name}.new")
    staged.write_bytes(content)
    os.replace(staged, path)


@asynccontextmanager
async def running_api(
    database_url: str, tmp_path: Path, **variables: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    log_path = tmp_path / "api.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",  # not called: no search here
        "DOCPIPE_API_HOST": "127.0.0.1",
        "DOCPIPE_API_PORT": str(port),
        "DOCPIPE_API_PIPELINES": "p",
        "DOCPIPE_API_JWT_KEY_CHECK_SECONDS": str(CHECK_S),
        "DOCPIPE_API_JWT_KEY_OVERLAP_SECONDS": str(OVERLAP_S),
        **variables,
    }
    for name in ("DOCPIPE_API_DEV_MODE", "DOCPIPE_API_JWT_SECRET"):
        env.pop(name, None)
    with log_path.open("ab") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "api", env=env, stdout=log, stderr=log
        )
    try:

        async def ready() -> bool:
            assert api.returncode is None, log_path.read_text()
            return await readyz(port) == 200

        await wait_until(ready, 30, "the API is ready")
        yield f"http://127.0.0.1:{port}", api
    finally:
        await stop(api)


async def status(url: str, token: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v1/pipelines/p/documents", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status


async def check_rotation(
    url: str, api: asyncio.subprocess.Process, old: str, rotate: Callable[[], str], log: Path
) -> None:
    """`old` works; after `rotate()` (which returns a token of the new key) the new token works
    at its first request, the old one through the overlap, and is refused after it."""
    assert await status(url, old) == 200
    assert await status(url, old) == 200  # and again, from the verifier's cache
    new = rotate()
    rotated = time.monotonic()
    # A token of the new key makes the API look at the file at once: no wait for the check.
    assert await status(url, new) == 200
    # Requests in flight with the old key still pass during the overlap (cached or not).
    assert await status(url, old) == 200
    assert time.monotonic() - rotated < OVERLAP_S - 1, "the overlap was spent before checking"

    async def old_refused() -> bool:
        return await status(url, old) == 401

    await wait_until(old_refused, OVERLAP_S + 5, "the old key's token is refused")
    assert time.monotonic() - rotated >= OVERLAP_S - CHECK_S
    assert await status(url, new) == 200
    assert api.returncode is None  # the same process: no restart
    assert "JWT keys reloaded" in await asyncio.to_thread(log.read_text)


async def test_a_rotated_hs256_secret_file_is_taken_without_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "jwt-secret"
    old_secret = secrets.token_hex(32)
    secret_file.write_text(old_secret + "\n")  # the newline an editor or `echo` adds
    async with running_api(
        database_url, tmp_path, DOCPIPE_API_JWT_SECRET_FILE=str(secret_file)
    ) as (url, api):
        old = mint_token(old_secret, subject="alice", scopes=["read"])

        def rotate() -> str:
            new_secret = secrets.token_hex(32)
            replace(secret_file, new_secret.encode())
            return mint_token(new_secret, subject="alice", scopes=["read"])

        await check_rotation(url, api, old, rotate, tmp_path / "api.log")


def rsa_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def rs256_token(private: bytes) -> str:
    claims = {"sub": "bob", "scope": "read", "exp": int(time.time()) + 600}
    return jwt.encode(claims, private, algorithm="RS256")


async def test_a_rotated_rs256_public_key_file_is_taken_without_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "jwt.pub"
    old_private, old_public = rsa_pair()
    key_file.write_bytes(old_public)
    async with running_api(
        database_url, tmp_path, DOCPIPE_API_JWT_PUBLIC_KEY_FILE=str(key_file)
    ) as (url, api):

        def rotate() -> str:
            private, public = rsa_pair()
            replace(key_file, public)
            return rs256_token(private)

        await check_rotation(url, api, rs256_token(old_private), rotate, tmp_path / "api.log")


async def test_an_unusable_new_key_file_keeps_the_old_key(
    database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "jwt-secret"
    old_secret = secrets.token_hex(32)
    secret_file.write_text(old_secret)
    async with running_api(
        database_url, tmp_path, DOCPIPE_API_JWT_SECRET_FILE=str(secret_file)
    ) as (url, api):
        old = mint_token(old_secret, subject="alice", scopes=["read"])
        replace(secret_file, b"too short")
        await asyncio.sleep(OVERLAP_S + CHECK_S * 2)
        # A fresh token (not in the cache) of the old secret: still the key in use.
        fresh = mint_token(old_secret, subject="alice", scopes=["read"], ttl_s=600)
        assert await status(url, fresh) == 200
        assert await status(url, old) == 200
        assert api.returncode is None
        assert "cannot be used" in (tmp_path / "api.log").read_text()


@pytest.mark.parametrize("variable", ["DOCPIPE_API_JWT_SECRET_FILE"])
async def test_a_missing_key_file_stops_the_api_at_start(
    database_url: str, tmp_path: Path, variable: str
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
        variable: str(tmp_path / "absent"),
    }
    env.pop("DOCPIPE_API_DEV_MODE", None)
    env.pop("DOCPIPE_API_JWT_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", "api", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err.decode()
    assert "cannot read the JWT secret file" in err.decode()
