"""A WHIP-style caller built on GStreamer's webrtcbin: what a telephony gateway bridges in with.

Runs under Debian's /usr/bin/python3 (python3-gi + GStreamer 1.22), not the project venv, so
it uses only the standard library and `gi`. It offers one sendrecv audio m-line (Opus or PCMU,
no data channel, like a SIP gateway), sends a real-time source (a wav file or a tone), POSTs
the offer as `application/sdp` with a Bearer token, applies the answer, records what the
server sends back until it has `--seconds` of audio and 0.5 s more after a sample of at least
`--min-peak` (or `--timeout` passes), DELETEs the call and prints one JSON summary line on stdout:

    /usr/bin/python3 tests/e2e/gst_client.py http://127.0.0.1:8080 --token KEY --codec pcmu

Exit status 0 when the call connected and audio came back, 1 otherwise (the summary says why).
"""

from __future__ import annotations

import argparse
import array
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from dataclasses import asdict, dataclass, field
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp, GstSdp, GstWebRTC  # noqa: E402

RATE = 16_000  # what the received audio is converted to before it is measured
AFTER_LOUD = RATE // 2  # samples kept recording after the first loud one (--min-peak)

# encoder -> payloader, with the caps webrtcbin needs to build the m-line
_SEND = {
    "opus": (
        "audioresample ! audio/x-raw,rate=48000,channels=1 ! opusenc bitrate=32000 ! rtpopuspay pt=111 "
        "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"
    ),
    "pcmu": (
        "audioresample ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay pt=0 "
        "! application/x-rtp,media=audio,encoding-name=PCMU,payload=0,clock-rate=8000"
    ),
}

# depayloader -> decoder (decodebin does not autoplug RTP depayloaders)
_RECV = {"opus": "rtpopusdepay ! opusdec", "pcmu": "rtppcmudepay ! mulawdec"}


@dataclass
class Summary:
    codec: str
    status: int | None = None  # of the POST
    call_id: str | None = None
    answer_codecs: list[str] = field(default_factory=list)
    connected: bool = False
    connection_state: str = "new"
    ice_state: str = "new"
    dtls_state: str = "new"
    connect_ms: float | None = None
    sent_seconds: float = 0.0
    received_samples: int = 0  # at 16 kHz, after decoding
    received_rms: float = 0.0
    received_peak: float = 0.0
    delete_status: int | None = None
    error: str | None = None


class Receiver:
    """Decoded audio from the server, converted to 16 kHz mono S16 and accumulated."""

    def __init__(self, loud: float) -> None:
        self.lock = threading.Lock()
        self.pcm = array.array("h")
        self.loud = int(loud * 32768)  # int16 level that counts as "loud"
        self.loud_at: int | None = None  # sample index where the first loud buffer began

    def on_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            try:
                chunk = array.array("h", bytes(info.data))
            finally:
                buf.unmap(info)
            with self.lock:
                if self.loud_at is None and max((abs(v) for v in chunk), default=0) >= self.loud:
                    self.loud_at = len(self.pcm)
                self.pcm.extend(chunk)
        return Gst.FlowReturn.OK

    def samples(self) -> array.array[int]:
        with self.lock:
            return array.array("h", self.pcm)


class GstCaller:
    def __init__(self, codec: str, wav: str | None, loud: float) -> None:
        self.codec = codec
        self.receiver = Receiver(loud)
        if wav:
            # filesrc is not live: clocksync paces it like a microphone
            src = f"filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! clocksync"
        else:
            src = "audiotestsrc is-live=true wave=sine freq=330 volume=0.3"
        desc = f"webrtcbin name=w bundle-policy=max-bundle {src} ! audioconvert ! {_SEND[codec]} ! queue ! w.sink_0"
        pipe = Gst.parse_launch(desc)
        assert isinstance(pipe, Gst.Pipeline)
        self.pipe = pipe
        self.webrtc = pipe.get_by_name("w")
        self.webrtc.connect("pad-added", self._on_pad)
        # the offer can only be made once webrtcbin knows the send caps, which it signals
        self.negotiation_needed = threading.Event()
        self.webrtc.connect("on-negotiation-needed", lambda _w: self.negotiation_needed.set())
        self.started_at = 0.0

    # --- media -------------------------------------------------------------------------------
    def _on_pad(self, _w: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        bin_ = Gst.parse_bin_from_description(
            f"queue ! {_RECV[self.codec]} ! audioconvert ! audioresample "
            f"! audio/x-raw,format=S16LE,rate={RATE},channels=1 "
            "! appsink name=rx emit-signals=true sync=false",
            True,
        )
        self.pipe.add(bin_)
        bin_.get_by_name("rx").connect("new-sample", self.receiver.on_sample)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))

    # --- signalling --------------------------------------------------------------------------
    def start(self) -> None:
        self.pipe.set_state(Gst.State.PLAYING)
        self.started_at = time.monotonic()
        # a gateway calls out sendrecv: it sends the caller and plays the agent
        for i in range(8):
            t = self.webrtc.emit("get-transceiver", i)
            if t is None:
                break
            t.props.direction = GstWebRTC.WebRTCRTPTransceiverDirection.SENDRECV

    def offer(self, timeout: float) -> str:
        if not self.negotiation_needed.wait(timeout):
            raise TimeoutError("webrtcbin never asked for negotiation (no send caps?)")
        promise = Gst.Promise.new()
        self.webrtc.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            raise RuntimeError(f"create-offer failed: {reply.to_string() if reply is not None else 'no reply'}")
        promise = Gst.Promise.new()
        self.webrtc.emit("set-local-description", offer, promise)
        promise.wait()
        # no trickle: wait for every candidate, as WHIP without PATCH needs
        deadline = time.monotonic() + timeout
        while self.webrtc.props.ice_gathering_state != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return self.webrtc.props.local_description.sdp.as_text()

    def answer(self, sdp: str) -> None:
        res, msg = GstSdp.SDPMessage.new_from_text(sdp)
        if res != GstSdp.SDPResult.OK:
            raise ValueError(f"unparseable answer ({res})")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", answer, promise)
        promise.wait()

    def states(self) -> tuple[str, str, str]:
        w = self.webrtc.props
        dtls = "new"
        t = self.webrtc.emit("get-transceiver", 0)
        if t is not None and t.props.receiver is not None and t.props.receiver.props.transport is not None:
            dtls = _nick(t.props.receiver.props.transport.props.state)
        return _nick(w.connection_state), _nick(w.ice_connection_state), dtls

    def bus_error(self) -> str | None:
        msg = self.pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if msg is None:
            return None
        err, debug = msg.parse_error()
        return f"{err.message} ({debug})"

    def stop(self) -> None:
        self.pipe.set_state(Gst.State.NULL)


def _nick(value: Any) -> str:
    return str(value.value_nick) if hasattr(value, "value_nick") else str(value)


def _http(method: str, url: str, token: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _level(pcm: array.array[int]) -> tuple[float, float]:
    if not pcm:
        return 0.0, 0.0
    rms = math.sqrt(sum(v * v for v in pcm) / len(pcm)) / 32768
    return rms, max(abs(min(pcm)), abs(max(pcm))) / 32768


def run(args: argparse.Namespace) -> Summary:
    s = Summary(codec=args.codec)
    caller = GstCaller(args.codec, args.wav, args.min_peak)
    try:
        caller.start()
        offer = caller.offer(timeout=5)
        base = args.url.rstrip("/")
        s.status, headers, body = _http("POST", f"{base}/v1/calls", args.token, offer.encode())
        if s.status != 201:
            s.error = f"POST /v1/calls -> {s.status}: {body[:300].decode(errors='replace')}"
            return s
        location = urllib.parse.urljoin(base + "/", headers["Location"])
        s.call_id = location.rsplit("/", 1)[1]
        answer = body.decode()
        s.answer_codecs = sorted(
            {ln.split(" ", 1)[1].split("/")[0].lower() for ln in answer.splitlines() if ln.startswith("a=rtpmap:")}
        )
        caller.answer(answer)
        deadline = time.monotonic() + args.timeout
        want = int(args.seconds * RATE)
        while time.monotonic() < deadline:
            s.connection_state, s.ice_state, s.dtls_state = caller.states()
            if s.connection_state == "connected" and not s.connected:
                s.connected = True
                s.connect_ms = round((time.monotonic() - caller.started_at) * 1000, 1)
            if s.connection_state == "failed" or s.dtls_state == "failed":
                s.error = "connection failed"
                break
            if (err := caller.bus_error()) is not None:
                s.error = err
                break
            rx = caller.receiver
            with rx.lock:
                n, loud_at = len(rx.pcm), rx.loud_at
            if n >= want and (args.min_peak <= 0 or (loud_at is not None and n - loud_at >= AFTER_LOUD)):
                break
            time.sleep(0.05)
        else:
            s.error = s.error or f"timed out after {args.timeout} s"
        s.delete_status = _http("DELETE", location, args.token)[0]
        return s
    finally:
        s.sent_seconds = round(time.monotonic() - caller.started_at, 2) if caller.started_at else 0.0
        pcm = caller.receiver.samples()
        caller.stop()
        s.received_samples = len(pcm)
        rms, peak = _level(pcm)
        s.received_rms, s.received_peak = round(rms, 5), round(peak, 5)
        if args.out:
            with wave.open(args.out, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(pcm.tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", required=True, help="API key or page token (Bearer)")
    p.add_argument("--codec", choices=sorted(_SEND), default="opus")
    p.add_argument("--wav", help="send this wav file (paced in real time) instead of a tone")
    p.add_argument("--out", help="write the received audio here (16 kHz mono wav)")
    p.add_argument("--seconds", type=float, default=2.0, help="stop once this much audio came back")
    p.add_argument("--min-peak", type=float, default=0.0, help="and until 0.5 s after a sample this loud (0-1)")
    p.add_argument("--timeout", type=float, default=15.0, help="give up after this long connected or not")
    args = p.parse_args()
    Gst.init(None)
    s = run(args)
    print(json.dumps(asdict(s)), flush=True)
    sys.exit(0 if s.connected and s.received_samples > 0 and s.error is None else 1)


if __name__ == "__main__":
    main()
