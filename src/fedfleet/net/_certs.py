"""Credentials for a test federation: a local CA, a server certificate, per-client certificates.

Clients authenticate with mutual TLS: the server trusts only certificates its CA signed, and the
client id is the number in the certificate's common name (``client-3`` is client 3). Revoking a
client means adding its CN (or bare id) as a line of the server's revocation file
(``revoked.txt`` here); the server re-reads it whenever it changes.

Layout of ``create_test_federation(DIR, n)``::

    DIR/ca.pem  DIR/ca.key                      the certificate authority
    DIR/server.pem  DIR/server.key              SAN localhost, 127.0.0.1
    DIR/client-<i>.pem  DIR/client-<i>.key      for i in 0..n-1
    DIR/revoked.txt                             empty: nobody is revoked yet
    DIR/.gitignore                              ``*``: the private keys never reach git
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfleet.errors import FedfleetError

__all__ = [
    "client_id_from_cn",
    "create_ca",
    "create_test_federation",
    "issue_certificate",
    "read_pem",
]

_CN = re.compile(r"^client-(\d{1,9})$")


def client_id_from_cn(cn: str) -> int | None:
    """The client id a certificate CN names (``client-7`` -> 7), None for any other CN."""
    m = _CN.match(cn)
    return int(m.group(1)) if m else None


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of the PEM file ``path``; ``what`` says what it is ("CA certificate").

    A missing, unreadable or non-PEM file is a one-line :class:`FedfleetError` naming the file
    and what it should hold, instead of an ``OSError`` traceback or a TLS handshake that fails
    later for no stated reason.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FedfleetError(
            f"{what} {str(path)!r} does not exist; create credentials with `fedfleet certs` "
            "or pass the path of the right file"
        ) from None
    except OSError as e:
        raise FedfleetError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise FedfleetError(f"{what} {str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(out_dir: str | Path, name: str = "fedfleet test CA") -> tuple[Path, Path]:
    """A self-signed CA valid for ten years; returns (certificate path, key path).

    Also writes ``out_dir/.gitignore`` holding ``*`` (unless one exists), so the CA key and the
    keys issued next to it are never committed, wherever the directory is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ignore = out / ".gitignore"
    if not ignore.exists():
        ignore.write_text(
            "# written by fedfleet: private keys (ca.key, *.key) stay out of git\n*\n"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(key), private=True)
    return out / "ca.pem", out / "ca.key"


def issue_certificate(
    ca_dir: str | Path, name: str, *, server: bool = False, out_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by the CA in ``ca_dir``; returns (cert, key) paths.

    Server certificates get SANs ``localhost`` and ``127.0.0.1`` besides ``name``.
    """
    ca_dir = Path(ca_dir)
    out = Path(out_dir) if out_dir is not None else ca_dir
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except FileNotFoundError as e:
        raise FedfleetError(f"no CA in {str(ca_dir)!r} ({e}); create one with create_ca") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        if name not in ("localhost", "127.0.0.1"):
            sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    stem = "server" if server else name
    out.mkdir(parents=True, exist_ok=True)
    _write(out / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / f"{stem}.key", _key_pem(key), private=True)
    return out / f"{stem}.pem", out / f"{stem}.key"


def create_test_federation(out_dir: str | Path, num_clients: int) -> Path:
    """Write a CA, a server certificate and ``num_clients`` client certificates into ``out_dir``.

    Examples:
        >>> d = create_test_federation("certs", 2)  # doctest: +SKIP
        >>> sorted(p.name for p in d.glob("client-*.pem"))  # doctest: +SKIP
        ['client-0.pem', 'client-1.pem']
    """
    if num_clients < 1:
        raise FedfleetError(f"num_clients must be at least 1, got {num_clients}")
    out = Path(out_dir)
    create_ca(out)
    issue_certificate(out, "localhost", server=True)
    for i in range(num_clients):
        issue_certificate(out, f"client-{i}")
    revoked = out / "revoked.txt"
    if not revoked.exists():
        revoked.write_text("")
    return out
