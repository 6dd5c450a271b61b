"""``runtime._tls`` and ``runtime.rpc.security`` without sockets: the CA and member
certificates (names, uses, validity), the files and their modes, the join bundle's round
trip and its errors, and the rule for binding off loopback."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from runtime import _session, _tls, config
from runtime.exceptions import ConfigError
from runtime.rpc import security


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_a_member_certificate_is_signed_by_the_ca_and_names_the_cluster_and_hosts() -> None:
    ca = _tls.make_ca()
    member = _tls.issue(ca, "node", ["127.0.0.1", "10.1.2.3", "head.example"])
    cert, ca_cert = _cert(member.cert_pem), _cert(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [_tls.CLUSTER_NAME, "head.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                         ipaddress.ip_address("10.1.2.3")]
    uses = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(uses) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=364) < life <= datetime.timedelta(days=_tls.VALID_DAYS, minutes=5)
    _tls.Identity(ca.cert_pem, member.cert_pem, member.key_pem).check("here")


def test_the_head_names_loopback_its_bind_address_and_hostname_but_not_a_wildcard() -> None:
    assert _tls.san_hosts("0.0.0.0")[:2] == ["127.0.0.1", "localhost"]
    assert "0.0.0.0" not in _tls.san_hosts("0.0.0.0")
    assert "10.0.0.7" in _tls.san_hosts("10.0.0.7")


def test_the_cluster_files_are_private_and_load_back(tmp_path: pathlib.Path) -> None:
    tls_dir = _tls.make_cluster_tls(tmp_path, "127.0.0.1", "t" * 64)
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    names = sorted(p.name for p in tls_dir.iterdir())
    assert names == ["ca.key", "ca.pem", "join.json", "node.key", "node.pem"]
    for p in tls_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    identity = _tls.load_dir(tls_dir)
    bundle = _tls.read_bundle(_tls.bundle_path(tls_dir))
    assert bundle.token == "t" * 64
    assert bundle.identity.ca_pem == identity.ca_pem
    assert bundle.identity.key_pem != identity.key_pem  # the head's key never leaves its machine
    # A joining machine writes the bundle's files into its own session; they load the same.
    other = tmp_path / "joined"
    other.mkdir()
    joined = _tls.load_dir(_tls.install_bundle(bundle, other))
    assert joined == bundle.identity
    _session.remove_secrets(tmp_path)
    assert not tls_dir.exists()


def test_a_bundle_round_trips(tmp_path: pathlib.Path) -> None:
    ca = _tls.make_ca()
    member = _tls.issue(ca, "m")
    identity = _tls.Identity(ca.cert_pem, member.cert_pem, member.key_pem)
    path = _tls.write_bundle(tmp_path / "b.json", "secret", identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _tls.read_bundle(path) == _tls.Bundle("secret", identity)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the join bundle"),
    ("not json", "not JSON"),
    ('{"kind": "other"}', "no \"kind\""),
    ('{"kind": "cellray-join-bundle", "version": 9}', "version 9"),
    ('{"kind": "cellray-join-bundle", "version": 1, "token": "x"}', "lacks ca, cert, key"),
])
def test_a_bad_bundle_says_what_is_wrong(tmp_path: pathlib.Path, content: str | None,
                                         message: str) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        _tls.read_bundle(path)
    assert "cellray start --head --tls" in str(info.value) or "version" in message


def test_certificates_of_another_ca_or_expired_ones_are_refused(tmp_path: pathlib.Path) -> None:
    ca, other = _tls.make_ca(), _tls.make_ca()
    foreign = _tls.issue(other, "m")
    with pytest.raises(ConfigError, match="not issued by this CA"):
        _tls.Identity(ca.cert_pem, foreign.cert_pem, foreign.key_pem).check("the test")
    old = _tls.issue(ca, "m", days=1, now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3))
    with pytest.raises(ConfigError, match=r"expired on .* start the cluster again"):
        _tls.Identity(ca.cert_pem, old.cert_pem, old.key_pem).check("the test")
    mine = _tls.issue(ca, "m")
    with pytest.raises(ConfigError, match="key does not belong"):
        _tls.Identity(ca.cert_pem, mine.cert_pem, foreign.key_pem).check("the test")
    # The bundle carries the same check.
    body = {"kind": _tls.BUNDLE_KIND, "version": 1, "token": "x", "ca": ca.cert_pem.decode(),
            "cert": foreign.cert_pem.decode(), "key": foreign.key_pem.decode()}
    (tmp_path / "b.json").write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=r"join bundle .* not issued by this CA"):
        _tls.read_bundle(tmp_path / "b.json")


def test_a_missing_tls_file_names_it_and_the_setting(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"ca\.pem .*CELLRAY_TLS_DIR"):
        _tls.load_dir(tmp_path)


def test_plaintext_may_bind_loopback_only_unless_insecure() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        security.check_bind(host, 1, tls=False, insecure=False)
    with pytest.raises(security.InsecureBindError) as info:
        security.check_bind("0.0.0.0", 6380, tls=False, insecure=False)
    message = str(info.value)
    assert "0.0.0.0:6380" in message and "--tls" in message and "--insecure" in message
    assert isinstance(info.value, PermissionError)
    security.check_bind("0.0.0.0", 6380, tls=True, insecure=False)
    security.check_bind("10.0.0.1", 6380, tls=False, insecure=True)


def test_the_insecure_warning_is_printed_once_per_address() -> None:
    out = io.StringIO()
    assert security.warn_insecure("192.0.2.10", out)
    assert not security.warn_insecure("192.0.2.10", out)
    assert not security.warn_insecure("127.0.0.1", out)
    text = out.getvalue()
    assert text.count("WITHOUT TLS") == 1 and "192.0.2.10" in text and "--tls" in text


def test_the_settings_choose_the_transport(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"insecure .*must be 0 or 1"):
        config.Settings(insecure=2)
    assert security.from_settings(config.Settings()) == security.PLAINTEXT
    assert security.from_settings(config.Settings(insecure=1)).insecure
    tls_dir = _tls.make_cluster_tls(tmp_path, "127.0.0.1", "t")
    transport = security.from_settings(config.Settings(tls_dir=str(tls_dir)))
    assert transport.tls and transport.identity == _tls.load_dir(tls_dir)


def test_an_installed_transport_wins_until_it_is_uninstalled(tmp_path: pathlib.Path) -> None:
    before = security.current()
    tls = security.Transport(_tls.load_dir(_tls.make_cluster_tls(tmp_path, "127.0.0.1", "t")))
    security.install(tls)
    try:
        assert security.current() is tls
    finally:
        security.uninstall(tls)
    assert security.current() == before


def test_cluster_attach_takes_the_bundle_and_start_does_not() -> None:
    from IPython.core.error import UsageError

    from kernel_ext import arguments, magics

    @arguments.cluster
    def cluster(line: str) -> None:
        """%cluster"""

    args = arguments.parse(cluster, "attach 10.0.0.5:6380 --bundle /tmp/join.json")
    assert (args.action, args.address, args.bundle) == ("attach", "10.0.0.5:6380", "/tmp/join.json")
    magics._check_cluster_args("attach", args)
    with pytest.raises(UsageError, match="does not take --bundle"):
        magics._check_cluster_args("start", arguments.parse(cluster, "start --bundle x"))
    assert arguments.in_attach_terms("use rt.init(address=..., bundle=FILE)", "h:1") == (
        "use %cluster attach h:1 --bundle FILE")


def test_a_wildcard_bind_is_advertised_as_an_address_peers_can_reach() -> None:
    assert security.advertised_host("10.1.2.3") == "10.1.2.3"
    assert security.advertised_host("127.0.0.1", "10.9.9.9:6380") == "127.0.0.1"
    for toward in ("", "127.0.0.1:6380", "0.0.0.0:6380"):
        got = security.advertised_host("0.0.0.0", toward)
        ipaddress.IPv4Address(got)  # an address, never the wildcard itself
        assert got != "0.0.0.0"
