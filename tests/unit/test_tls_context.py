"""TLS on the listener (issue 9), without sockets: the config's PEM checks and
proxy.tls's context (built, reloaded in place, a bad file keeping the old one)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from fastmirror.config import ConfigError, load_config
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.context import ProxyContext
from fastmirror.proxy import tls


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("cert", "key", "ca", "junk")}
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    Path(paths["junk"]).write_text("-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n")
    return paths


def load(**overrides: object):
    return load_config(None, {"primary": "127.0.0.1:9", **overrides})


def error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(**overrides)
    return str(info.value)


def test_pem_checks_name_the_key_and_the_file(files, tmp_path):
    assert load(tls_cert=files["cert"], tls_key=files["key"]).tls_key == files["key"]
    missing = str(tmp_path / "nope.pem")
    assert error(tls_cert=missing, tls_key=files["key"]) == (
        f'--tls-cert: cannot read the file: No such file or directory, got "{missing}"')
    assert error(tls_cert=files["junk"], tls_key=files["key"]).startswith(
        "--tls-cert: is not a PEM certificate file")  # armour around junk is not PEM
    assert error(tls_cert=files["cert"], tls_key=files["cert"]).startswith(
        "--tls-key: is not a PEM private key file")
    assert files["cert"] in error(tls_cert=files["cert"], tls_key=files["cert"])
    assert error(tls_cert=files["key"], tls_key=files["key"]).startswith("--tls-cert: is not a PEM certificate")
    assert error(tls_client_ca=files["key"], tls_cert=files["cert"], tls_key=files["key"]).startswith(
        "--tls-client-ca: is not a PEM certificate")
    assert error(tls_cert=files["cert"]).startswith("tls_key: required with tls_cert")
    assert error(tls_key=files["key"]).startswith("tls_cert: required with tls_key")
    assert error(tls_client_ca=files["ca"]).startswith("--tls-client-ca: needs a TLS listener")
    assert error(tls_cert=files["cert"], tls_key=files["key"], tls_handshake_timeout="0").startswith(
        "--tls-handshake-timeout: must be a number of seconds > 0")


def test_context_tls12_alpn_and_client_certificates(files):
    ctx = tls.server_context(load(tls_cert=files["cert"], tls_key=files["key"]))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_NONE
    mtls = tls.server_context(load(tls_cert=files["cert"], tls_key=files["key"], tls_client_ca=files["ca"]))
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in mtls.get_ca_certs()] and len(mtls.get_ca_certs()) == 1  # no system CAs


def test_a_key_of_another_certificate_is_refused(files, tmp_path):
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = str(tmp_path / "other.pem")
    other.private_key_pem.write_to_path(other_key)
    config = load(tls_cert=files["cert"], tls_key=other_key)  # each file is fine alone
    with pytest.raises(ConfigError, match=f"^tls_key: {other_key} does not match the certificate in"):
        tls.server_context(config)


def test_reload_loads_into_the_same_context_and_a_bad_file_changes_nothing(files, tmp_path):
    config = load(tls_cert=files["cert"], tls_key=files["key"])
    listener = tls.ListenerTLS(config, ProxyContext(config, Registry(process=False)))
    ctx = listener.context
    second = trustme.CA().issue_cert("127.0.0.1")
    cert2, key2 = str(tmp_path / "cert2.pem"), str(tmp_path / "key2.pem")
    second.cert_chain_pems[0].write_to_path(cert2)
    second.private_key_pem.write_to_path(key2)
    listener.reload(load(tls_cert=cert2, tls_key=key2, tls_handshake_timeout="2"))
    assert listener.context is ctx and listener.timeout == 2.0  # same object: tickets survive
    with pytest.raises(ConfigError, match="^tls_key: "):
        listener.reload(load(tls_cert=files["cert"], tls_key=key2))  # a mismatched pair
    assert listener.context is ctx
    listener.reload(load(tls_cert=cert2, tls_key=key2, tls_client_ca=files["ca"]))
    assert listener.context is not ctx and listener.context.verify_mode == ssl.CERT_REQUIRED


def test_handshake_problem_phrases():
    assert tls.handshake_problem(ConnectionAbortedError("SSL handshake is taking longer")) == "handshake timeout"
    assert tls.handshake_problem(ConnectionResetError()) == "client closed the connection"
    err = ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request")
    err.reason = "HTTP_REQUEST"
    assert tls.handshake_problem(err) == "HTTP_REQUEST"


def test_a_client_that_just_closes_is_not_a_handshake_error():
    assert not tls.is_handshake_error(ConnectionResetError())
    assert not tls.is_handshake_error(BrokenPipeError())
    assert tls.is_handshake_error(ConnectionAbortedError("SSL handshake is taking longer"))
    assert tls.is_handshake_error(ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request"))
