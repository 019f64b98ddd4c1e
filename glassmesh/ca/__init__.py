"""The built-in certificate authority: a root per trust domain, SPIFFE leaves for services and hosts."""

from glassmesh.ca.signer import (
    CA,
    CAError,
    Leaf,
    ca_from_pem,
    ca_key_pem,
    fingerprint,
    init_ca,
    load_ca,
    save_ca,
    spiffe_id_of,
)

__all__ = ["CA", "CAError", "Leaf", "ca_from_pem", "ca_key_pem", "fingerprint", "init_ca", "load_ca", "save_ca",
           "spiffe_id_of"]
