"""A verifier over a key file follows the file: checked at most every `check_s` (or at once after
a wrong-key failure), the replaced keys accepted through the overlap only, cached tokens included;
an unusable new file keeps the keys in use."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from docpipe_api.auth import (
    DEVELOPMENT_SECRET,
    AuthError,
    KeyConfigError,
    KeyFile,
    TokenVerifier,
    mint_token,
    secret_file_keys,
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def setup(
    tmp_path: Path, *, overlap_s: float = 30.0, check_s: float = 5.0
) -> tuple[Path, str, TokenVerifier, Clock]:
    path = tmp_path / "secret"
    secret = secrets.token_hex(32)
    path.write_text(secret + "\n")
    clock = Clock()
    keys = KeyFile(path, secret_file_keys, check_s=check_s, overlap_s=overlap_s)
    return path, secret, TokenVerifier(keys, leeway_s=0, clock=clock), clock


def token(secret: str, subject: str = "alice") -> str:
    return mint_token(secret, subject=subject, scopes=["read"])


def test_the_secret_file_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = secrets.token_hex(32)
    path.write_text(f"  {secret}\r\n")
    assert secret_file_keys(path).secret == secret.encode()


def test_a_secret_file_with_the_development_secret_or_too_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(DEVELOPMENT_SECRET + "\n")
    with pytest.raises(KeyConfigError, match="development secret"):
        secret_file_keys(path)
    assert (
        secret_file_keys(path, allow_development_secret=True).secret == DEVELOPMENT_SECRET.encode()
    )
    path.write_text("short\n")
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        secret_file_keys(path)
    with pytest.raises(KeyConfigError, match="cannot read"):
        secret_file_keys(tmp_path / "absent")


def test_a_token_of_a_new_key_makes_the_verifier_look_at_the_file_at_once(tmp_path: Path) -> None:
    path, _, verifier, _ = setup(tmp_path)
    new = secrets.token_hex(32)
    write(path, new)
    # A token of the new key fails the current key and makes the verifier look at once.
    assert verifier.verify(token(new)).subject == "alice"


def test_the_old_key_works_through_the_overlap_only_cached_tokens_included(
    tmp_path: Path,
) -> None:
    path, old, verifier, clock = setup(tmp_path, overlap_s=30)
    cached = token(old, "cached")
    verifier.verify(cached)
    write(path, secrets.token_hex(32))
    clock.now += 5  # the periodic check sees the change
    assert verifier.verify(cached).subject == "cached"
    assert verifier.verify(token(old, "uncached")).subject == "uncached"
    clock.now += 31
    for subject in ("cached", "uncached", "fresh"):
        with pytest.raises(AuthError, match="signature"):
            verifier.verify(token(old, subject))


def test_with_no_overlap_the_old_key_is_refused_at_once(tmp_path: Path) -> None:
    path, old, verifier, clock = setup(tmp_path, overlap_s=0)
    cached = token(old)
    verifier.verify(cached)
    write(path, secrets.token_hex(32))
    clock.now += 5
    with pytest.raises(AuthError):
        verifier.verify(cached)


def test_the_file_is_not_looked_at_more_often_than_the_check_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, old, verifier, clock = setup(tmp_path, check_s=5)
    looks: list[Path] = []
    real_stat = os.stat

    def counting_stat(p: Path, *args: object, **kwargs: object) -> os.stat_result:
        looks.append(p)
        return real_stat(p)

    monkeypatch.setattr(os, "stat", counting_stat)
    good = token(old)
    for _ in range(100):
        verifier.verify(good)
    assert len(looks) == 1  # the first call
    # Bad tokens force a look, at most once a second.
    for _ in range(100):
        with pytest.raises(AuthError):
            verifier.verify(token(secrets.token_hex(32)))
    assert len(looks) == 2
    clock.now += 1
    with pytest.raises(AuthError):
        verifier.verify(token(secrets.token_hex(32)))
    assert len(looks) == 3


def test_an_unusable_new_file_keeps_the_keys_in_use(tmp_path: Path) -> None:
    path, old, verifier, clock = setup(tmp_path, overlap_s=0)
    write(path, "short")
    clock.now += 5
    assert verifier.verify(token(old, "still")).subject == "still"
    path.unlink()  # a Secret volume's swap can leave the path missing for an instant
    clock.now += 5
    assert verifier.verify(token(old, "again")).subject == "again"
    new = secrets.token_hex(32)
    write(path, new)
    clock.now += 5
    assert verifier.verify(token(new)).subject == "alice"


def test_a_token_with_a_bad_claim_does_not_fall_back_to_the_old_key(tmp_path: Path) -> None:
    path, old, verifier, clock = setup(tmp_path)
    write(path, secrets.token_hex(32))
    clock.now += 5
    expired = mint_token(old, subject="alice", ttl_s=-60)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(expired)
