"""A self-signed certificate for `--tls`: a throwaway CA and a leaf for localhost and 127.0.0.1.

The official example clients only speak https/wss (spec §9), so the sandbox can serve them on one
TLS port. Clients trust the sandbox by trusting `ca.pem` (`REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`).
"""

from __future__ import annotations

from pathlib import Path

import trustme
from attrs import frozen


@frozen
class TlsFiles:
    cert: Path  # the server's certificate chain
    key: Path
    ca: Path | None  # the CA to trust; None when the operator brought their own certificate


def generate(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="flexbot sandbox")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = TlsFiles(
        cert=directory / "cert.pem", key=directory / "key.pem", ca=directory / "ca.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key.chmod(0o600)
    return files
