"""DTLS handshakes between our certificate's context and the kinds of peers that call in,
done in memory with pyOpenSSL (the same OpenSSL aiortc uses), no network and no GStreamer.

The GStreamer-like server copies what gst-plugins-bad 1.22's dtls elements set up: an
RSA-2048 self-signed certificate, `ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH`, SRTP_AES128_CM_SHA1_80.
"""

from __future__ import annotations

import datetime

import pytest
from aiortc import RTCConfiguration
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

from signaling import dtls

GST_CIPHERS = b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH"


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def server_context(kind: str) -> SSL.Context:
    """A DTLS server like GStreamer 1.22 (`rsa`) or like a browser (`ecdsa`)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ciphers = GST_CIPHERS
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        ciphers = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(self_signed(key))
    ctx.use_privatekey(key)
    ctx.set_cipher_list(ciphers)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    return ctx


def handshake(client_ctx: SSL.Context, server_ctx: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    """Shuttle datagrams between two memory-BIO connections until both finish (or one fails)."""
    client, server = SSL.Connection(client_ctx), SSL.Connection(server_ctx)
    client.set_connect_state()
    server.set_accept_state()
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
            while True:
                try:
                    peer.bio_write(conn.bio_read(65536))
                except SSL.WantReadError:
                    break
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


def our_client_context() -> SSL.Context:
    return dtls.GatewayCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)


def test_gstreamer_like_rsa_server_accepts_our_client_hello() -> None:
    client, server = handshake(our_client_context(), server_context("rsa"))
    assert client.get_cipher_name() == server.get_cipher_name()
    assert "ECDHE-RSA" in (client.get_cipher_name() or "")
    assert client.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    # our certificate stays ECDSA: the server saw it as the client certificate
    peer = server.get_peer_certificate(as_cryptography=True)
    assert peer is not None and isinstance(peer.public_key(), ec.EllipticCurvePublicKey)


def test_aiortc_default_context_is_refused_by_the_rsa_server() -> None:
    """The root cause, pinned: aiortc's own ECDSA-only list meets an RSA-only server."""
    plain = RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    with pytest.raises(SSL.Error, match=r"no shared cipher|handshake failure"):
        handshake(plain, server_context("rsa"))


def test_browser_like_ecdsa_server_still_negotiates_an_ecdsa_suite() -> None:
    client, _ = handshake(our_client_context(), server_context("ecdsa"))
    assert "ECDHE-ECDSA" in (client.get_cipher_name() or "")


def test_ecdsa_suites_come_first_and_every_suite_is_known_to_openssl() -> None:
    names = dtls.CIPHERS.split(b":")
    assert names[:4] == [n for n in names if b"-ECDSA-" in n]  # browsers keep getting ECDSA
    ctx = our_client_context()
    conn = SSL.Connection(ctx)
    offered = set(conn.get_cipher_list())
    assert {n.decode() for n in names} <= offered, {n.decode() for n in names} - offered


async def test_peer_connection_uses_the_gateway_certificate() -> None:
    pc = dtls.peer_connection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        transport = pc.getTransceivers()[0].receiver.transport
        cert = transport._RTCDtlsTransport__local_certificate  # type: ignore[attr-defined]
        assert isinstance(cert, dtls.GatewayCertificate)
        # the SDP fingerprint is the certificate the DTLS context will present
        fp = cert.getFingerprints()[0].value
        assert pc.localDescription is not None and fp in pc.localDescription.sdp
    finally:
        await pc.close()
