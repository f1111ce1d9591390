"""TLS for a local cluster: a CA and one node certificate for 127.0.0.1/localhost (X.509).

Made on the first start of a home and kept: a restart reuses them, so clients that trust
the CA keep working. Keys are written mode 0600.
"""
import datetime
import ipaddress
from pathlib import Path

from facebeam.transforms import privacy


def make_certs(cert_dir: Path) -> dict:
    """A CA and one node certificate for 127.0.0.1/localhost (kept if already there)."""
    paths = {k: cert_dir / f"{k.replace('_', '.')}" for k in ("ca_crt", "ca_key", "node_crt", "node_key")}
    if all(p.is_file() for p in paths.values()):
        return paths
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facebeam local"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("facebeam local CA")).issuer_name(name("facebeam local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    node_key = key()
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    node = (x509.CertificateBuilder().subject_name(name("facebeam local node")).issuer_name(ca.subject)
            .public_key(node_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    privacy.write_private(paths["ca_key"], pem_key(ca_key))
    privacy.write_private(paths["node_key"], pem_key(node_key))
    paths["ca_crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["node_crt"].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    return paths

