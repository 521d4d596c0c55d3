"""Bearer tokens of the intake API: verifying a JWT into a principal (owner and scopes), and minting
development tokens. No I/O beyond the key files: read when a verifier is built, and read again
when they change (a rotated Secret), checked at most every few seconds."""

from __future__ import annotations

import json
import logging
import os
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

# `admin` reads the audit trail (GET /v1/audit), across owners. Tokens get it only when asked
# for: DEFAULT_SCOPES, what `docpipe token` and `mint_token` give by default, leave it out.
SCOPES = ("read", "write", "search", "admin")
DEFAULT_SCOPES = ("read", "write", "search")
REALM = "docpipe"

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32

# A key file is checked for a change (inode, mtime, size) at most this often, and, after a token
# failed to verify, at once but at most once per KEY_FORCED_CHECK_S. The keys it replaces are still
# accepted for KEY_OVERLAP_S, so that tokens in flight during a rotation are not refused.
KEY_CHECK_S = 5.0
KEY_FORCED_CHECK_S = 1.0
KEY_OVERLAP_S = 60.0

log = logging.getLogger(__name__)

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

    def __init__(self, message: str, *, token_given: bool = True, wrong_key: bool = False) -> None:
        super().__init__(message)
        # RFC 6750 §3.1: a request without credentials gets a challenge without an error code.
        self.token_given = token_given
        # The signature does not verify with the keys (or names a key id they lack): a rotated
        # key file may hold the key it needs.
        self.wrong_key = wrong_key

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


def secret_file_keys(path: Path, *, allow_development_secret: bool = False) -> VerificationKeys:
    """Keys from a file holding the HS256 secret (surrounding whitespace, such as the newline an
    editor adds, is not part of it)."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KeyConfigError(f"cannot read the JWT secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyConfigError(f"the JWT secret file {path} is not UTF-8 text") from None
    if secret == DEVELOPMENT_SECRET and not allow_development_secret:
        raise KeyConfigError(
            f"the JWT secret file {path} holds the public development secret, which anybody can "
            "sign tokens with"
        )
    try:
        return secret_keys(secret)
    except KeyConfigError as exc:
        raise KeyConfigError(f"{path}: {exc}") from None


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


def _file_version(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: device, inode, mtime, size (following
    symlinks, as Kubernetes' `..data` swap of a Secret volume needs); None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class KeyFile:
    """Verification keys loaded from a file, and loaded again when the file changes: so a rotated
    Secret mounted as a file takes effect without a restart. The file is looked at (one `stat`)
    at most every `check_s` seconds, or after a token failed to verify, at most once a second. A
    file that cannot be loaded (half written, missing during a swap) keeps the keys in use."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], VerificationKeys],
        *,
        check_s: float = KEY_CHECK_S,
        overlap_s: float = KEY_OVERLAP_S,
    ) -> None:
        self.path = path
        self._load = load
        self.check_s = check_s
        # How long the keys a reload replaces are still accepted (read by TokenVerifier).
        self.overlap_s = overlap_s
        self._version = _file_version(path)
        self.keys = load(path)  # KeyConfigError at start: the API refuses to start
        self._next_check = float("-inf")
        self._next_forced = float("-inf")
        self._failed_version: tuple[int, int, int, int] | None = None

    def refresh(self, now: float, *, force: bool = False) -> VerificationKeys | None:
        """The file's new keys when it changed since they were last loaded; None otherwise, or
        when it was looked at too recently to look again."""
        if force:
            if now < self._next_forced:
                return None
            self._next_forced = now + KEY_FORCED_CHECK_S
        elif now < self._next_check:
            return None
        self._next_check = now + self.check_s
        version = _file_version(self.path)
        if version == self._version:
            return None
        try:
            keys = self._load(self.path)
        except KeyConfigError as exc:
            if version != self._failed_version:
                self._failed_version = version
                log.warning(
                    "the changed JWT key file cannot be used; the keys loaded before stay in use",
                    extra={"path": str(self.path), "error": str(exc)},
                )
            return None
        self._version = version
        self._failed_version = None
        self.keys = keys
        return keys


class TokenVerifier:
    """Checks `Authorization: Bearer <jwt>`: signature, `exp` (required), `nbf`, issuer and
    audience when configured, and a `sub`. A token that verified is remembered until its `exp`
    (at most `cache_s` seconds) and not checked again meanwhile.

    Given a KeyFile, it follows the file: new keys replace the old ones, which verify tokens (and
    keep cached ones valid) for the file's `overlap_s` more seconds, and no longer after that."""

    def __init__(
        self,
        keys: VerificationKeys | KeyFile,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 30.0,
        cache_s: float = TOKEN_CACHE_MAX_S,
        cache_size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = keys if isinstance(keys, KeyFile) else None
        self._keys = keys.keys if isinstance(keys, KeyFile) else keys
        # The keys the last reload replaced, accepted until `_previous_until`.
        self._previous: VerificationKeys | None = None
        self._previous_until = float("-inf")
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
        self._reload(now)
        known = self._verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[token]
        principal, until = self._verify_with_rotation(token, now)
        if self._cache_s > 0:
            if len(self._verified) >= self._cache_size:
                self._forget_expired(now)
            self._verified[token] = (principal, min(until, now + self._cache_s))
        return principal

    def _verify_with_rotation(self, token: str, now: float) -> tuple[Principal, float]:
        """The principal and until when it may be cached: `exp` (without the leeway: after it the
        token is checked in full again, and the leeway then applies as it would have without the
        cache), or the end of the overlap for a token only the replaced keys verify."""
        try:
            return self._verify(token)
        except AuthError as exc:
            if not exc.wrong_key:
                raise
            failed = exc
        # Signed with a key we do not have: the file may have changed since it was last looked at.
        if self._reload(now, force=True):
            try:
                return self._verify(token)
            except AuthError as exc:
                if not exc.wrong_key:
                    raise
                failed = exc
        if self._previous is not None and now < self._previous_until:
            try:
                principal, expires = self._check(token, self._previous)
            except AuthError as exc:
                # Its own complaint (expired, audience...) when the replaced keys did verify it.
                raise (failed if exc.wrong_key else exc) from None
            return principal, min(expires, self._previous_until)
        raise failed

    def _reload(self, now: float, *, force: bool = False) -> bool:
        """Take the key file's new keys if it changed; True when it did."""
        if self._source is None:
            return False
        keys = self._source.refresh(now, force=force)
        if keys is None:
            return False
        self._previous, self._keys = self._keys, keys
        self._previous_until = now + self._source.overlap_s
        # Tokens cached so far were verified with the replaced keys: good through the overlap only.
        self._verified = {
            token: (principal, min(until, self._previous_until))
            for token, (principal, until) in self._verified.items()
        }
        log.info(
            "JWT keys reloaded",
            extra={"path": str(self._source.path), "overlap_s": self._source.overlap_s},
        )
        return True

    def _forget_expired(self, now: float) -> None:
        self._verified = {t: entry for t, entry in self._verified.items() if now < entry[1]}
        while len(self._verified) >= self._cache_size:
            # Still full of live tokens: drop the oldest entries (dicts keep insertion order).
            del self._verified[next(iter(self._verified))]

    def _verify(self, token: str) -> tuple[Principal, float]:
        return self._check(token, self._keys)

    def _check(self, token: str, keys: VerificationKeys) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            key = _key_for(keys, header)
            claims = jwt.decode(
                token,
                key,
                # Fixed by the configured key, never taken from the token: `alg: none` and
                # HS256-signed-with-the-public-key tokens are refused here.
                algorithms=keys.algorithms,
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
                f"the token's algorithm is not accepted (only {', '.join(keys.algorithms)})"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify", wrong_key=True) from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is malformed: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise AuthError("the token's 'sub' must be a string of 1 to 255 characters")
        # pyjwt has checked that `exp` is present and a number.
        return Principal(subject=subject, scopes=_scopes(claims)), float(claims["exp"])


def _key_for(keys: VerificationKeys, header: Mapping[str, Any]) -> Any:
    if keys.secret is not None:
        return keys.secret
    rsa_keys = keys.rsa_keys or {}
    kid = header.get("kid")
    if kid in rsa_keys:
        return rsa_keys[kid]
    if len(rsa_keys) == 1:
        # A single configured key verifies tokens whatever kid they name (or none).
        return next(iter(rsa_keys.values()))
    raise AuthError(f"the token's key id {kid!r} is not among the configured keys", wrong_key=True)


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
    scopes: Iterable[str] = DEFAULT_SCOPES,
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
