"""Bearer tokens of the intake API: verifying a JWT into a principal (owner and scopes), and minting
development tokens. Pure: no I/O beyond reading key files once, when a verifier is built."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

# The secret `docpipe token` signs with when nothing else is configured. Everybody can read it
# here, so the API accepts it only in development mode (DOCPIPE_API_DEV_MODE=true).
DEVELOPMENT_SECRET = "docpipe-development-secret-not-for-production-use"

SCOPES = ("read", "write", "search")
REALM = "docpipe"

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32

# Verified tokens remembered at most this long, and at most this many: a client sends the same
# token with every request, and checking it again (base64, JSON, HMAC or RSA) is a large part of
# a cheap request's time. Only tokens that verified are remembered, so only holders of valid
# tokens can fill the cache.
TOKEN_CACHE_MAX_S = 300.0
TOKEN_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `subject` owns the documents it uploads; `scopes` say what it may do."""

    subject: str
    scopes: frozenset[str]


class AuthError(Exception):
    """The request carries no usable token: 401 with a WWW-Authenticate challenge."""

    def __init__(self, message: str, *, token_given: bool = True) -> None:
        super().__init__(message)
        # RFC 6750 §3.1: a request without credentials gets a challenge without an error code.
        self.token_given = token_given

    def challenge(self) -> str:
        if not self.token_given:
            return f'Bearer realm="{REALM}"'
        description = str(self).replace('"', "'")
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'


class KeyConfigError(Exception):
    """A key file or secret cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class VerificationKeys:
    """What signatures are checked with: an HS256 secret, or RS256 public keys (by key id)."""

    secret: bytes | None = None
    rsa_keys: Mapping[str | None, Any] | None = None

    @property
    def algorithms(self) -> list[str]:
        return ["HS256"] if self.secret is not None else ["RS256"]


def secret_keys(secret: str) -> VerificationKeys:
    """Keys from a shared HS256 secret (at least 32 bytes)."""
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise KeyConfigError(
            f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes long (HS256), got {len(raw)}"
        )
    return VerificationKeys(secret=raw)


def public_key_file_keys(path: Path) -> VerificationKeys:
    """Keys from a PEM file holding one RSA public key."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyConfigError(f"cannot read the public key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyConfigError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise KeyConfigError(f"{path} holds a {type(key).__name__}, not an RSA public key")
    return VerificationKeys(rsa_keys={None: key})


def jwks_file_keys(path: Path) -> VerificationKeys:
    """Keys from a JWKS file: its RSA signing keys, by `kid`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyConfigError(f"cannot read the JWKS file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyConfigError(f"{path} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyConfigError(f'{path} is not a JWKS document (no "keys" list)')
    keys: dict[str | None, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            keys[entry.get("kid")] = RSAAlgorithm.from_jwk(entry)
        except (jwt.InvalidKeyError, ValueError, KeyError) as exc:
            raise KeyConfigError(f"{path}: key {entry.get('kid')!r} is unusable: {exc}") from None
    if not keys:
        raise KeyConfigError(f"{path} holds no RSA signing key for RS256")
    return VerificationKeys(rsa_keys=keys)


class TokenVerifier:
    """Checks `Authorization: Bearer <jwt>`: signature, `exp` (required), `nbf`, issuer and
    audience when configured, and a `sub`. A token that verified is remembered until its `exp`
    (at most `cache_s` seconds) and not checked again meanwhile."""

    def __init__(
        self,
        keys: VerificationKeys,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 30.0,
        cache_s: float = TOKEN_CACHE_MAX_S,
        cache_size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._cache_s = cache_s
        self._cache_size = cache_size
        self._clock = clock
        # token -> (principal, until): keyed by the whole token, signature included, so a token
        # differing in any byte from one that verified is checked in full.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify_header(self, authorization: str | None) -> Principal:
        """The principal of an Authorization header value; AuthError when it is not valid."""
        if not authorization:
            raise AuthError("no bearer token", token_given=False)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'", token_given=False)
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        """The principal of a JWT; AuthError when it is not valid."""
        now = self._clock()
        known = self._verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[token]
        principal, expires = self._verify(token)
        if self._cache_s > 0:
            if len(self._verified) >= self._cache_size:
                self._forget_expired(now)
            # `exp` without the leeway: after it the token is checked in full again, and the
            # leeway then applies as it would have without the cache.
            self._verified[token] = (principal, min(expires, now + self._cache_s))
        return principal

    def _forget_expired(self, now: float) -> None:
        self._verified = {t: entry for t, entry in self._verified.items() if now < entry[1]}
        while len(self._verified) >= self._cache_size:
            # Still full of live tokens: drop the oldest entries (dicts keep insertion order).
            del self._verified[next(iter(self._verified))]

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header)
            claims = jwt.decode(
                token,
                key,
                # Fixed by the configured key, never taken from the token: `alg: none` and
                # HS256-signed-with-the-public-key tokens are refused here.
                algorithms=self._keys.algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token's issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(
                f"the token's algorithm is not accepted (only {', '.join(self._keys.algorithms)})"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is malformed: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise AuthError("the token's 'sub' must be a string of 1 to 255 characters")
        # pyjwt has checked that `exp` is present and a number.
        return Principal(subject=subject, scopes=_scopes(claims)), float(claims["exp"])

    def _key_for(self, header: Mapping[str, Any]) -> Any:
        if self._keys.secret is not None:
            return self._keys.secret
        keys = self._keys.rsa_keys or {}
        kid = header.get("kid")
        if kid in keys:
            return keys[kid]
        if len(keys) == 1:
            # A single configured key verifies tokens whatever kid they name (or none).
            return next(iter(keys.values()))
        raise AuthError(f"the token's key id {kid!r} is not among the configured keys")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    # OAuth 2 puts scopes in a space-separated `scope` string; some issuers use an `scp` list.
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


def mint_token(
    secret: str,
    *,
    subject: str,
    scopes: Iterable[str] = SCOPES,
    ttl_s: float = 3600.0,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for `subject` with `scopes`, valid for `ttl_s` seconds."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": issued,
        "exp": issued + int(ttl_s),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
