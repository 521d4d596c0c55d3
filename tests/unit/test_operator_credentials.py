"""The operator's credentials: when they are renewed, how a loaded configuration becomes Kopf's
connection info, and how Kopf's client and the operator's own share one renewal."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator import credentials
from docpipe_operator.credentials import Credentials, Login

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@given(
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=1.0, max_value=1e6),
)
def test_a_credential_is_renewed_after_most_of_its_lifetime_and_before_it_expires(
    offset: float, lifetime: float
) -> None:
    loaded = T0 + timedelta(seconds=offset)
    expires = loaded + timedelta(seconds=lifetime)
    renew = credentials.refresh_time(loaded, expires)
    assert loaded < renew < expires
    share = (renew - loaded) / (expires - loaded)
    assert share == pytest.approx(credentials.REFRESH_FRACTION, abs=1e-5)


def _configuration(**fields: Any) -> SimpleNamespace:
    defaults: dict[str, Any] = {
        "host": "https://10.0.0.1:443/",
        "api_key": {},
        "ssl_ca_cert": None,
        "verify_ssl": True,
        "cert_file": None,
        "key_file": None,
    }
    return SimpleNamespace(**{**defaults, **fields})


@pytest.mark.parametrize(
    ("api_key", "header"),
    [
        ({"BearerToken": "Bearer abc"}, "Bearer abc"),
        ({"BearerToken": "bearer abc\n"}, "Bearer abc"),  # in-cluster: as read from the file
        ({"authorization": "Bearer abc"}, "Bearer abc"),  # the package before 36
        ({"BearerToken": "abc"}, "Bearer abc"),
        ({"BearerToken": "Basic dTpw"}, "Basic dTpw"),
    ],
)
def test_the_loaded_authorization_becomes_the_header_kopf_sends(
    api_key: dict[str, str], header: str
) -> None:
    info = credentials.connection_info(_configuration(api_key=api_key))
    assert info.as_http_headers() == {"Authorization": header}
    assert info.server == "https://10.0.0.1:443"
    assert credentials.has_credentials(info)


def test_a_configuration_without_a_token_or_certificate_has_no_credentials() -> None:
    info = credentials.connection_info(_configuration(ssl_ca_cert="/ca.crt", verify_ssl=False))
    assert info.as_http_headers() == {}
    assert info.ca_path == "/ca.crt"
    assert info.insecure is True
    assert not credentials.has_credentials(info)
    # A certificate without its key cannot authenticate either.
    half = credentials.connection_info(_configuration(cert_file="/client.crt"))
    assert not credentials.has_credentials(half)
    whole = credentials.connection_info(_configuration(cert_file="/c.crt", key_file="/c.key"))
    assert credentials.has_credentials(whole)


def _logins(*tokens: str, expiration: datetime | None = None) -> Callable[[], Login]:
    """A loader that gives the tokens in turn (the last one again once they run out)."""
    given_tokens = itertools.chain(tokens, itertools.repeat(tokens[-1]))

    def load() -> Login:
        info = kopf.ConnectionInfo(
            server="https://k", token=next(given_tokens), expiration=expiration
        )
        return Login(info, "the test's loader")

    return load


def test_kopf_gets_the_startup_login_without_loading_again() -> None:
    source = Credentials(_logins("a", "b"))
    assert source.for_kopf().token == "a"
    assert source.loads == 1


def test_a_refused_login_is_loaded_again_for_kopf_and_shared_with_the_operator() -> None:
    source = Credentials(_logins("a", "b"))
    refused = source.for_kopf()
    # Kopf asks again while it still has the current credentials: they were refused (401).
    assert source.for_kopf().token == "b"
    assert source.current().token == "b"
    assert source.current(rejected=refused).token == "b"  # already renewed: not loaded again
    assert source.loads == 2


def test_kopf_takes_the_renewal_the_operator_client_already_made() -> None:
    source = Credentials(_logins("a", "b", "c"))
    kopf_has = source.for_kopf()
    assert source.current(rejected=kopf_has).token == "b"  # the operator's client got a 401
    assert source.for_kopf().token == "b"
    assert source.loads == 2


def test_the_same_credentials_again_after_a_refusal_are_a_login_error() -> None:
    source = Credentials(_logins("a"))
    source.for_kopf()
    with pytest.raises(kopf.LoginError, match="refused the credentials of the test's loader"):
        source.for_kopf()


def test_expired_credentials_are_due_and_renewed_once_for_both_clients() -> None:
    past = datetime.now(tz=UTC) - timedelta(seconds=1)
    future = datetime.now(tz=UTC) + timedelta(hours=1)
    tokens = iter([("a", past), ("b", future)])

    def load() -> Login:
        token, expiration = next(tokens)
        return Login(
            kopf.ConnectionInfo(server="https://k", token=token, expiration=expiration), "t"
        )

    source = Credentials(load)
    assert source.due()
    assert source.current().token == "b"
    assert not source.due()
    assert source.for_kopf().token == "b"
    assert source.loads == 2


def test_a_token_file_that_changes_is_due(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("a")

    def load() -> Login:
        token = token_file.read_text()
        return Login(kopf.ConnectionInfo(server="https://k", token=token), "t", str(token_file))

    source = Credentials(load)
    assert not source.due()
    rotated = tmp_path / "token.new"
    rotated.write_text("b")
    rotated.replace(token_file)
    assert source.due()
    assert source.current().token == "b"
    assert not source.due()
