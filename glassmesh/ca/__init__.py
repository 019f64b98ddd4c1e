"""The built-in certificate authority: a root per trust domain, SPIFFE leaves for services and hosts."""

from glassmesh.ca.signer import CA, CAError, Leaf, fingerprint, init_ca, load_ca, spiffe_id_of

__all__ = ["CA", "CAError", "Leaf", "fingerprint", "init_ca", "load_ca", "spiffe_id_of"]
