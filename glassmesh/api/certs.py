"""What a certificate means in the mesh, shared by the CA, the control plane and the proxy.

Kept here, not in glassmesh.ca, so that a proxy reading its own certificates
does not depend on the CA's code (the planes meet only through model/ and api/).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a certificate object is read: a proxy never loads it (proxy/certfacts.py)
    from cryptography import x509

# What an operator may do, named in its certificate's subject organization as `glassmesh:<role>`:
# admin changes the mesh (config, hosts, tokens); read-only reads it (status, config, history, metrics).
OPERATOR_ROLES = ("admin", "read-only")
ROLE_PREFIX = "glassmesh:"

# Leaves start this long before they are issued, so that a clock a little behind still accepts them.
CLOCK_SKEW = timedelta(minutes=5)


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The first `spiffe://` URI SAN of `cert`, or None when it has none."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri
    return None


def _role(orgs: list[str]) -> str | None:
    for value in orgs:
        if value.startswith(ROLE_PREFIX) and value[len(ROLE_PREFIX):] in OPERATOR_ROLES:
            return value[len(ROLE_PREFIX):]
    return None


def role_of(subject: tuple[tuple[tuple[str, str], ...], ...] | None) -> str | None:
    """The operator role in a peer certificate's subject as `ssl.getpeercert()` gives it, or None."""
    return _role([v for rdn in subject or () for k, v in rdn if k == "organizationName"])


def role_of_cert(cert: x509.Certificate) -> str | None:
    """The operator role in a certificate's subject organization (`glassmesh:<role>`), or None."""
    from cryptography import x509

    return _role([str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)])
