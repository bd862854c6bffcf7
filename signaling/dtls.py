"""DTLS that gateways can talk to, and which layer of a peer connection failed.

Why the cipher list: aiortc's DTLS context offers only ECDHE-*ECDSA* suites (aiortc PR #1011
dropped the RSA ones to keep the ClientHello small). That is enough against browsers, whose
certificates are ECDSA, but GStreamer's webrtcbin up to at least 1.22 (Debian 12) signs with
an RSA-2048 certificate. A gateway built on it offers `a=setup:actpass`, aiortc answers
`active`, so aiortc is the DTLS client and GStreamer the server; a server holding only an RSA
key can pick none of the client's suites and aborts with `no shared cipher`. Our
certificate stays ECDSA (mandatory in RFC 8827, what browsers expect); we only add the
ECDHE-RSA twin of each suite aiortc offers, which is what Chromium's own DTLS client offers
too, so the ClientHello grows by four suites and still fits one datagram.

aiortc has no public way to pass certificates or a cipher list (its RTCPeerConnection makes
its own RTCCertificate), so `peer_connection()` swaps the one certificate it generated for a
subclass that builds aiortc's SSL context and then widens the cipher list. It checks that
aiortc still looks the way this relies on and fails loudly if not, rather than silently
reverting to ECDSA-only.
"""

from __future__ import annotations

from typing import Literal

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, SRTPProtectionProfile
from OpenSSL import SSL

# aiortc's four ECDSA suites first (browsers pick from these), then their ECDHE-RSA twins
CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    ]
)

FailureReason = Literal["ice_failed", "dtls_failed"]


class GatewayCertificate(RTCCertificate):
    """aiortc's ECDSA certificate and SSL context, with RSA-certificate peers' suites allowed."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHERS)
        return ctx


_CERTS_ATTR = "_RTCPeerConnection__certificates"


def peer_connection(configuration: RTCConfiguration) -> RTCPeerConnection:
    """An RTCPeerConnection whose DTLS transports will use a GatewayCertificate."""
    pc = RTCPeerConnection(configuration)
    certs = getattr(pc, _CERTS_ATTR, None)
    if not (isinstance(certs, list) and len(certs) == 1 and isinstance(certs[0], RTCCertificate)):
        raise RuntimeError(
            "aiortc's RTCPeerConnection no longer keeps one certificate in "
            f"{_CERTS_ATTR}: signaling/dtls.py must be updated for this aiortc version"
        )
    certs[0] = GatewayCertificate.generateCertificate()
    return pc


def _dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    found = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        found.append(pc.sctp.transport)
    return list(dict.fromkeys(found))  # BUNDLE: usually one transport shared by all


def failure_reason(pc: RTCPeerConnection) -> FailureReason:
    """Which layer made `pc.connectionState` "failed": ICE (no path, or consent lost) or DTLS
    (handshake refused, e.g. no shared cipher, or a fingerprint that does not match the SDP)."""
    transports = _dtls_transports(pc)
    if any(t.transport.state == "failed" for t in transports):
        return "ice_failed"
    if any(t.state == "failed" for t in transports):
        return "dtls_failed"
    return "ice_failed"  # aiortc fails a connection only through one of the two


def transport_states(pc: RTCPeerConnection) -> dict[str, str]:
    """ICE and DTLS states of the connection's transports, for logs."""
    transports = _dtls_transports(pc)
    return {
        "ice": ",".join(sorted({t.transport.state for t in transports})) or "none",
        "dtls": ",".join(sorted({t.state for t in transports})) or "none",
    }
