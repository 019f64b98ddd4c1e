"""What a certificate means in the mesh, shared by the CA, the control plane and the proxy.

Kept here, not in glassmesh.ca, so that a proxy reading its own certificates
does not depend on the CA's code (the planes meet only through model/ and api/).
"""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509

# Leaves start this long before they are issued, so that a clock a little behind still accepts them.
CLOCK_SKEW = timedelta(minutes=5)


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The first `spiffe://` URI SAN of `cert`, or None when it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri
    return None
