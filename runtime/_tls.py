"""Mutual TLS for a cluster: its CA, its certificates, their files and the join bundle.

What is made, and why
---------------------
* **One CA per cluster**, made when the head starts with TLS (``cellray start --head
  --tls``, ``LocalCluster(tls=True)``): an EC P-256 key, a self-signed certificate valid
  ``VALID_DAYS`` (about a year; a cluster that runs longer needs a new start). Its key
  stays in the head's session directory; nothing is signed with it after the start.
* **Two member certificates**, issued by that CA at the same time. ``node`` is used by
  every process on the head's machine (GCS, global schedulers, the head's node managers,
  their workers, drivers started there: they can read the session directory). ``join``
  goes into the join bundle, for nodes and drivers elsewhere, so the head's own key never
  leaves its machine. Each is a server *and* a client certificate (``serverAuth`` and
  ``clientAuth``): node managers serve other nodes and drivers, and call them too.
* **Names.** Every member certificate names ``CLUSTER_NAME``; the head's also names
  127.0.0.1, localhost, the bind address and the machine's hostname, so ordinary tools
  (``openssl s_client -verify_hostname``) can check the head by its address. Clients
  check the server against ``CLUSTER_NAME``, not against the address they dialled
  (``grpc.ssl_target_name_override`` in ``runtime.rpc.channel``): nodes join from
  addresses nobody knows when the certificates are made, and the bundle holds no CA key
  that could issue them one on their machine. The trust is the private CA itself: only
  the cluster's members hold a certificate it signed, so a server that proves it holds
  one is a member, whatever address it answers on.
* **Mutual.** Servers require a client certificate signed by the cluster's CA
  (``require_client_auth``): a plaintext client, one without a certificate and one with
  a certificate of another CA fail in the handshake, before any byte of a request is
  read. The cluster token is still checked on top (``runtime.rpc.interceptors``).
* There is no revocation: a leaked bundle is retired by starting a new cluster.

Files (each 0600, the ``tls`` directory 0700)::

    <session>/tls/ca.pem      the CA's certificate
    <session>/tls/ca.key      the CA's key (the head's machine only)
    <session>/tls/node.pem    the member certificate of this machine's processes
    <session>/tls/node.key    its key
    <session>/tls/join.json   the join bundle (the head's machine only)

A node joined with a bundle writes ``ca.pem``, ``node.pem`` and ``node.key`` from it into
its own session's ``tls/``; its workers read them there. A process finds its files through
the ``tls_dir`` setting (``CELLRAY_TLS_DIR``), which launchers pass to their children.

The join bundle is one JSON object::

    {"kind": "cellray-join-bundle", "version": 1,
     "token": "<cluster token>", "ca": "<PEM>", "cert": "<PEM>", "key": "<PEM>"}

It is a secret (it holds the token and a member's key): written 0600, copied to the
machines that join by the same means as a password.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import os
import pathlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.exceptions import ConfigError

__all__ = [
    "BUNDLE_KIND",
    "CLUSTER_NAME",
    "VALID_DAYS",
    "Bundle",
    "Identity",
    "KeyPair",
    "bundle_path",
    "install_bundle",
    "issue",
    "load_dir",
    "make_ca",
    "make_cluster_tls",
    "read_bundle",
    "san_hosts",
    "tls_dir_of",
    "write_bundle",
]

#: The name every member certificate holds and every client checks (see the module doc).
CLUSTER_NAME = "cellray-cluster"
#: How long the CA and the member certificates are valid, in days.
VALID_DAYS = 365
#: The ``kind`` field of a join bundle.
BUNDLE_KIND = "cellray-join-bundle"
BUNDLE_VERSION = 1

_CA, _CA_KEY, _CERT, _KEY, _BUNDLE = "ca.pem", "ca.key", "node.pem", "node.key", "join.json"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "cellray cluster CA", *, days: int = VALID_DAYS,
            now: datetime.datetime | None = None) -> KeyPair:
    """A new self-signed CA (EC P-256) valid ``days`` days from ``now``."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of machines differ a little
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(ca: KeyPair, name: str, hosts: Sequence[str] = (), *, days: int = VALID_DAYS,
          now: datetime.datetime | None = None) -> KeyPair:
    """A member certificate signed by ``ca``: server and client, naming ``CLUSTER_NAME``
    and ``hosts`` (IP addresses or DNS names) as subject alternative names."""
    now = now or _now()
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key; make the CA with runtime._tls.make_ca",
                          setting="tls_dir")
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys([CLUSTER_NAME, *hosts]))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                         key_cert_sign=False, crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def san_hosts(bind_host: str) -> list[str]:
    """The names of the head's certificate: loopback, ``bind_host`` (unless it is the
    wildcard 0.0.0.0 or ::) and this machine's hostname."""
    hosts = ["127.0.0.1", "localhost"]
    if bind_host and bind_host not in ("0.0.0.0", "::"):
        hosts.append(bind_host)
    hostname = socket.gethostname()
    if hostname:
        hosts.append(hostname)
    return list(dict.fromkeys(hosts))


@dataclass(frozen=True)
class Identity:
    """What one process needs for mutual TLS: the cluster's CA and a member's certificate and key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @functools.cached_property
    def _channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem,
                                            private_key=self.key_pem, certificate_chain=self.cert_pem)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: trust the cluster's CA only, present the member certificate."""
        return self._channel_credentials

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by the cluster's CA."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)],
                                           root_certificates=self.ca_pem, require_client_auth=True)

    def check(self, where: str) -> Identity:
        """Raise ``ConfigError`` naming ``where`` unless the certificate is valid now, signed
        by the CA, and matches the key; return ``self``."""
        try:
            ca = x509.load_pem_x509_certificate(self.ca_pem)
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except ValueError as err:
            raise ConfigError(f"the TLS files in {where} do not parse ({err}); they must be PEM "
                              "files written by `cellray start --head --tls`", setting="tls_dir") from err
        problem = _problem(ca, cert, key)
        if problem is not None:
            raise ConfigError(f"the TLS files in {where}: {problem}", setting="tls_dir")
        return self


def _problem(ca: x509.Certificate, cert: x509.Certificate, key: object) -> str | None:
    now = _now()
    for what, c in (("the CA certificate", ca), ("the member certificate", cert)):
        if c.not_valid_after_utc < now:
            return (f"{what} expired on {c.not_valid_after_utc:%Y-%m-%d}; start the cluster again "
                    "with --tls to get new ones (and hand out its new join bundle)")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as err:
        return (f"the member certificate was not issued by this CA ({type(err).__name__}); "
                "take ca.pem, node.pem and node.key from the same cluster")
    if not hasattr(key, "public_key") or key.public_key() != cert.public_key():
        return "the key does not belong to the member certificate; take both from the same cluster"
    return None


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (0600 from its creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def tls_dir_of(session_dir: pathlib.Path) -> pathlib.Path:
    """Where the TLS files of the session ``session_dir`` live (they may not exist)."""
    return session_dir / "tls"


def _make_dir(session_dir: pathlib.Path) -> pathlib.Path:
    d = tls_dir_of(session_dir)
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
    return d


def make_cluster_tls(session_dir: pathlib.Path, bind_host: str, token: str) -> pathlib.Path:
    """Make the cluster's CA, the head's member certificate and the join bundle in
    ``session_dir/tls`` (see the module doc); return that directory."""
    d = _make_dir(session_dir)
    ca = make_ca()
    node = issue(ca, "cellray head", san_hosts(bind_host))
    join = issue(ca, "cellray member")
    _write_private(d / _CA, ca.cert_pem)
    _write_private(d / _CA_KEY, ca.key_pem)
    _write_private(d / _CERT, node.cert_pem)
    _write_private(d / _KEY, node.key_pem)
    write_bundle(d / _BUNDLE, token, Identity(ca.cert_pem, join.cert_pem, join.key_pem))
    return d


def bundle_path(tls_dir: pathlib.Path) -> pathlib.Path:
    """The join bundle the head wrote in ``tls_dir``."""
    return tls_dir / _BUNDLE


def load_dir(tls_dir: str | os.PathLike[str]) -> Identity:
    """The identity in ``tls_dir`` (``ca.pem``, ``node.pem``, ``node.key``), checked.

    Raises ``ConfigError`` (a ``ValueError``) naming the file that is missing or wrong.
    """
    d = pathlib.Path(tls_dir)
    parts = []
    for name in (_CA, _CERT, _KEY):
        try:
            parts.append((d / name).read_bytes())
        except OSError as err:
            raise ConfigError(
                f"cannot read the TLS file {d / name} ({err.strerror or err}); the tls_dir setting "
                "(CELLRAY_TLS_DIR) must name a directory holding ca.pem, node.pem and node.key, "
                "as `cellray start --head --tls` writes them", setting="tls_dir") from None
    return Identity(*parts).check(str(d))


@dataclass(frozen=True)
class Bundle:
    """A join bundle's content: the cluster token and a member's identity."""

    token: str
    identity: Identity


def write_bundle(path: pathlib.Path, token: str, identity: Identity) -> pathlib.Path:
    """Write a join bundle (0600) at ``path``, which must not exist; return ``path``."""
    body = {"kind": BUNDLE_KIND, "version": BUNDLE_VERSION, "token": token,
            "ca": identity.ca_pem.decode(), "cert": identity.cert_pem.decode(),
            "key": identity.key_pem.decode()}
    _write_private(path, json.dumps(body, indent=1).encode())
    return path


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and check a join bundle.

    Raises ``ConfigError`` (a ``ValueError``) saying what is wrong: no such file, not a
    bundle, a field missing, certificates that do not fit together or have expired.
    """
    p = pathlib.Path(path).expanduser()
    hint = ("pass the join bundle `cellray start --head --tls` printed (tls/join.json in its "
            "session directory)")
    try:
        body = json.loads(p.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the join bundle {p} ({err.strerror or err}); {hint}",
                          setting="bundle") from None
    except ValueError as err:
        raise ConfigError(f"{p} is not a join bundle (not JSON: {err}); {hint}", setting="bundle") from None
    if not isinstance(body, dict) or body.get("kind") != BUNDLE_KIND:
        raise ConfigError(f"{p} is not a join bundle (no \"kind\": \"{BUNDLE_KIND}\"); {hint}",
                          setting="bundle")
    if body.get("version") != BUNDLE_VERSION:
        raise ConfigError(f"the join bundle {p} has version {body.get('version')!r}, this cellray "
                          f"reads version {BUNDLE_VERSION}; use the same cellray on every machine",
                          setting="bundle")
    missing = [k for k in ("token", "ca", "cert", "key") if not isinstance(body.get(k), str) or not body[k]]
    if missing:
        raise ConfigError(f"the join bundle {p} lacks {', '.join(missing)}; {hint}", setting="bundle")
    identity = Identity(body["ca"].encode(), body["cert"].encode(), body["key"].encode())
    return Bundle(body["token"], identity.check(f"the join bundle {p}"))


def install_bundle(bundle: Bundle, session_dir: pathlib.Path) -> pathlib.Path:
    """Write the bundle's CA, certificate and key into ``session_dir/tls`` (0600), for the
    processes a joining machine starts; return that directory."""
    d = _make_dir(session_dir)
    _write_private(d / _CA, bundle.identity.ca_pem)
    _write_private(d / _CERT, bundle.identity.cert_pem)
    _write_private(d / _KEY, bundle.identity.key_pem)
    return d
