"""Token verification of the intake API: every way a token can be wrong is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from docpipe_api.auth import (
    AuthError,
    KeyConfigError,
    Principal,
    TokenVerifier,
    jwks_file_keys,
    mint_token,
    public_key_file_keys,
    secret_keys,
)

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def hs_verifier(**options: object) -> TokenVerifier:
    return TokenVerifier(secret_keys(SECRET), leeway_s=0, **options)  # type: ignore[arg-type]


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "scope": "read search", "exp": now + 60, **overrides}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_a_valid_hs256_token_gives_its_subject_and_scopes() -> None:
    principal = hs_verifier().verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert principal.subject == "alice"
    assert principal.scopes == {"read", "search"}


def test_scopes_are_read_from_an_scp_list_too() -> None:
    token = jwt.encode(claims(scope=None, scp=["write"]), SECRET, algorithm="HS256")
    assert hs_verifier().verify(token).scopes == {"write"}


def test_minted_tokens_verify_with_issuer_and_audience() -> None:
    token = mint_token(SECRET, subject="dev", scopes=["read"], issuer="me", audience="docpipe")
    principal = hs_verifier(issuer="me", audience="docpipe").verify(token)
    assert principal.subject == "dev"


def unsigned(payload: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


# Tokens are built when the test runs, not when it is collected: a token with a near `exp` made
# at collection time would have expired by the time a long session reaches it.
@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (lambda: unsigned(claims()), "algorithm is not accepted"),
        (lambda: jwt.encode(claims(), "another-secret-of-sufficient-length!!", algorithm="HS256"),
         "signature does not verify"),
        (lambda: jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
         "expired"),
        (lambda: jwt.encode(claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256"),
         "not valid yet"),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "no 'exp' claim"),
        (lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
         "no 'sub' claim"),
        (lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"), "algorithm is not accepted"),
        (lambda: "not-a-jwt", "malformed"),
    ],
    ids=["alg-none", "wrong-key", "expired", "not-yet-valid", "no-exp", "no-sub", "hs512",
         "garbage"],
)  # fmt: skip
def test_bad_tokens_are_refused_with_the_reason(
    make_token: Callable[[], str], message: str
) -> None:
    with pytest.raises(AuthError, match=message) as caught:
        hs_verifier().verify(make_token())
    assert 'error="invalid_token"' in caught.value.challenge()


def test_a_token_for_another_audience_is_refused() -> None:
    token = jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="audience"):
        hs_verifier(audience="docpipe").verify(token)


def test_a_token_without_audience_is_refused_when_one_is_configured() -> None:
    with pytest.raises(AuthError):
        hs_verifier(audience="docpipe").verify(jwt.encode(claims(), SECRET, algorithm="HS256"))


def test_a_token_from_another_issuer_is_refused() -> None:
    token = jwt.encode(claims(iss="mallory"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="issuer"):
        hs_verifier(issuer="https://issuer.example").verify(token)


def test_a_missing_header_gets_a_challenge_without_an_error_code() -> None:
    with pytest.raises(AuthError) as caught:
        hs_verifier().verify_header(None)
    assert caught.value.challenge() == 'Bearer realm="docpipe"'


def test_a_non_bearer_scheme_is_refused() -> None:
    with pytest.raises(AuthError, match="Bearer"):
        hs_verifier().verify_header("Basic YWxpY2U6c2VjcmV0")


def test_rs256_tokens_verify_against_a_pem_public_key(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    verifier = TokenVerifier(public_key_file_keys(pem(rsa_key, tmp_path / "key.pem")))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert verifier.verify(token).subject == "alice"


def test_an_hs256_token_signed_with_the_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    # The classic algorithm confusion: the public key is public, so HS256 with it proves nothing.
    path = pem(rsa_key, tmp_path / "key.pem")
    verifier = TokenVerifier(public_key_file_keys(path))
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).decode().rstrip("=")
    signature = hmac.new(path.read_bytes(), f"{header}.{payload}".encode(), hashlib.sha256)
    sig = base64.urlsafe_b64encode(signature.digest()).decode().rstrip("=")
    with pytest.raises(AuthError, match="algorithm is not accepted"):
        verifier.verify(f"{header}.{payload}.{sig}")


def test_rs256_tokens_verify_against_the_jwks_key_their_kid_names(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, key in (("one", rsa_key), ("two", other)):
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    verifier = TokenVerifier(jwks_file_keys(path))
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "two"})
    assert verifier.verify(token).subject == "alice"
    wrong = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "one"})
    with pytest.raises(AuthError, match="signature"):
        verifier.verify(wrong)
    unknown = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "three"})
    with pytest.raises(AuthError, match="key id"):
        verifier.verify(unknown)


def test_a_short_secret_is_refused_at_configuration() -> None:
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        secret_keys("short")


def test_a_jwks_file_without_rsa_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "abc"}]}))
    with pytest.raises(KeyConfigError, match="no RSA signing key"):
        jwks_file_keys(path)


class CountingVerifier(TokenVerifier):
    """Counts the tokens it checks in full, i.e. those it did not find among the verified."""

    checked = 0

    def _verify(self, token: str) -> tuple[Principal, float]:
        self.checked += 1
        return super()._verify(token)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_verified_token_is_not_checked_again_within_the_cache_time() -> None:
    clock = Clock()
    verifier = CountingVerifier(secret_keys(SECRET), leeway_s=0, cache_s=60, clock=clock)
    token = jwt.encode(claims(exp=int(clock.now) + 3600), SECRET, algorithm="HS256")
    assert verifier.verify(token) == verifier.verify(token)
    assert verifier.checked == 1
    clock.now += 61
    verifier.verify(token)
    assert verifier.checked == 2


def test_a_verified_token_is_checked_again_after_its_exp() -> None:
    clock = Clock()
    verifier = CountingVerifier(secret_keys(SECRET), leeway_s=0, cache_s=600, clock=clock)
    token = jwt.encode(claims(exp=int(clock.now) + 30), SECRET, algorithm="HS256")
    verifier.verify(token)
    clock.now += 31
    verifier.verify(token)  # still valid by the real clock, but checked in full
    assert verifier.checked == 2


def test_a_remembered_token_is_refused_once_it_has_expired() -> None:
    verifier = hs_verifier()
    exp = int(time.time()) + 1
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    assert verifier.verify(token).subject == "alice"
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_a_token_differing_from_a_remembered_one_in_its_signature_is_refused() -> None:
    verifier = hs_verifier()
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    verifier.verify(token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(AuthError):
        verifier.verify(forged)


def test_the_cache_forgets_the_oldest_tokens_beyond_its_size() -> None:
    verifier = CountingVerifier(secret_keys(SECRET), leeway_s=0, cache_size=2)
    tokens = [jwt.encode(claims(sub=f"user{i}"), SECRET, algorithm="HS256") for i in range(3)]
    for token in tokens:
        verifier.verify(token)
    verifier.verify(tokens[2])
    assert verifier.checked == 3
    verifier.verify(tokens[0])
    assert verifier.checked == 4
