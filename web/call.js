// The call: session token, WebRTC offer/answer against the microturn edge, the `events`
// data channel, and the connection state machine. No DOM here: app.js listens to the
// events this dispatches ("state", "message", "track", "channel").
//
// States: idle -> connecting -> live <-> reconnecting -> ended | error.
// A network drop (ICE disconnected/failed) is retried by placing a new call; an HTTP
// error from the server (401/413/429/503...) ends in "error" with the server's message.

const ICE_GATHER_TIMEOUT_MS = 3000; // non-trickle: wait this long for gathering to complete
const CONNECT_TIMEOUT_MS = 15000; // offer sent -> ICE+DTLS connected
const DISCONNECTED_GRACE_MS = 5000; // ICE "disconnected" may heal by itself
// ~30 s of retries after the loss is noticed: a restarted server (a deploy, or a crash under a
// supervisor) loads its model and warms its engine before it listens, 5-20 s on a busy machine
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 8000, 8000];

/** An HTTP error answered by the server, carrying its JSON {error: {code, message}}. */
export class ServerError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "ServerError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function serverError(resp) {
  let code = `http_${resp.status}`;
  let message = "";
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || "";
    }
  } catch {
    // not JSON: fall through to the status line
  }
  if (!message) message = `The server answered ${resp.status} ${resp.statusText || ""}`.trim();
  // Retry-After in seconds (the server never sends the HTTP-date form)
  const ra = Number(resp.headers.get("Retry-After"));
  const retryAfter = Number.isFinite(ra) && ra > 0 ? ra : null;
  if (retryAfter) message = `${message.replace(/[.;]?\s*(try again later|retry in \d+ s)\.?$/i, "")}. Try again in ${retryAfter} s.`;
  return new ServerError(resp.status, code, message, retryAfter);
}

async function request(method, path, { token = null, json = undefined, keepalive = false } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, keepalive, cache: "no-store" });
  } catch (e) {
    throw new ServerError(0, "network", "Cannot reach the server. Check your connection and try again.");
  }
  if (!resp.ok) throw await serverError(resp);
  return resp;
}

function waitIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Call extends EventTarget {
  constructor() {
    super();
    this.state = "idle";
    this.message = "";
    this.pc = null;
    this.dc = null;
    this.callId = null;
    this.callUrl = null;
    this.micTrack = null;
    this.camTrack = null;
    this.reconnects = 0;
    this._token = null;
    this._tokenExpiry = 0;
    this._leaving = false;
    this._timers = new Set();
    this._generation = 0; // bumps on every new peer connection; stale callbacks check it
    this._lastServerError = null;
  }

  // ---------------------------------------------------------------- public API

  /** Place the call. micTrack / camTrack may be null (denied, or off). */
  async start({ micTrack = null, camTrack = null } = {}) {
    this.micTrack = micTrack;
    this.camTrack = camTrack;
    this._leaving = false;
    this.reconnects = 0;
    this._lastServerError = null;
    this._setState("connecting");
    try {
      await this._connect();
    } catch (e) {
      this._fail(e);
    }
  }

  /** Hang up: DELETE the call on the server, close everything. Safe to call twice. */
  async hangup(message = "Call ended.") {
    this._leaving = true;
    const gen = ++this._generation;
    await this._teardown({ notifyServer: true });
    if (gen === this._generation) this._setState("ended", message);
  }

  /** Send a JSON event on the data channel; false if it is not open. */
  send(obj) {
    if (!this.dc || this.dc.readyState !== "open") return false;
    this.dc.send(JSON.stringify(obj));
    return true;
  }

  get channelOpen() {
    return !!this.dc && this.dc.readyState === "open";
  }

  /** Swap the microphone track (null = send nothing) without renegotiating. */
  async setMicTrack(track) {
    this.micTrack = track;
    const sender = this._sender("audio");
    if (sender) await sender.replaceTrack(track);
  }

  /** Swap the camera track (null = camera off) without renegotiating. */
  async setCameraTrack(track) {
    this.camTrack = track;
    const sender = this._sender("video");
    if (sender) await sender.replaceTrack(track);
  }

  // ---------------------------------------------------------------- internals

  _sender(kind) {
    if (!this.pc) return null;
    const t = this.pc.getTransceivers().find((x) => x.receiver.track && x.receiver.track.kind === kind);
    return t ? t.sender : null;
  }

  _setState(state, message = "", retryAfter = null) {
    this.state = state;
    this.message = message;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, message, retryAfter } }));
  }

  _later(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _clearTimers() {
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
  }

  async _token_() {
    if (this._token && Date.now() < this._tokenExpiry) return this._token;
    const resp = await request("POST", "/v1/sessions", { json: {} });
    const body = await resp.json();
    if (!body || typeof body.token !== "string") {
      throw new ServerError(resp.status, "bad_response", "The server sent no session token.");
    }
    const ttl = Number(body.expires_in) || 60;
    this._token = body.token;
    // refresh a little early so a token never expires between offer and answer
    this._tokenExpiry = Date.now() + Math.max(1, ttl - 10) * 1000;
    return this._token;
  }

  async _connect() {
    const gen = ++this._generation;
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    this.pc = pc;
    const dc = pc.createDataChannel("events", { ordered: true });
    this.dc = dc;
    const stream = new MediaStream();
    if (this.micTrack) stream.addTrack(this.micTrack);
    pc.addTransceiver(this.micTrack || "audio", { direction: "sendrecv", streams: [stream] });
    // Always offer the (send-only) camera m-line so the camera can be switched on and off
    // mid-call with replaceTrack(), without renegotiation.
    pc.addTransceiver(this.camTrack || "video", { direction: "sendonly" });

    pc.addEventListener("track", (e) => {
      if (gen !== this._generation) return;
      const s = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      this.dispatchEvent(new CustomEvent("track", { detail: { track: e.track, stream: s } }));
    });
    pc.addEventListener("connectionstatechange", () => this._onPcState(gen));
    this._wireChannel(dc, gen);

    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, ICE_GATHER_TIMEOUT_MS);
    if (gen !== this._generation) return;
    const offer = { sdp: pc.localDescription.sdp, type: "offer" };

    let resp;
    try {
      resp = await request("POST", "/v1/calls", { token: await this._token_(), json: offer });
    } catch (e) {
      if (!(e instanceof ServerError) || e.status !== 401) throw e;
      // the token may have expired or the server restarted: one retry with a fresh token
      this._token = null;
      resp = await request("POST", "/v1/calls", { token: await this._token_(), json: offer });
    }
    const answer = await resp.json();
    if (gen !== this._generation) {
      // we hung up while the offer was in flight: release the call we just got
      this._deleteCall(answer.call_id ? `/v1/calls/${encodeURIComponent(answer.call_id)}` : resp.headers.get("Location"));
      return;
    }
    this.callId = answer.call_id || null;
    this.callUrl = resp.headers.get("Location") ||
      (this.callId ? `/v1/calls/${encodeURIComponent(this.callId)}` : null);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    this._later(() => {
      if (gen === this._generation && pc.connectionState !== "connected") {
        this._lost(gen, "Could not establish the media connection.");
      }
    }, CONNECT_TIMEOUT_MS);
  }

  _wireChannel(dc, gen) {
    dc.addEventListener("open", () => {
      if (gen !== this._generation) return;
      this.dispatchEvent(new CustomEvent("channel", { detail: { open: true } }));
    });
    dc.addEventListener("close", () => {
      if (gen !== this._generation) return;
      this.dispatchEvent(new CustomEvent("channel", { detail: { open: false } }));
      if (this._leaving) return;
      // The server closed the channel. If the media path is still up (or closed cleanly),
      // the server hung up on purpose; if the network broke, _onPcState reconnects.
      this._later(() => {
        if (gen !== this._generation || this._leaving) return;
        const s = this.pc ? this.pc.connectionState : "closed";
        if (s === "connected" || s === "closed" || s === "new") {
          const why = this._lastServerError ? `The server ended the call: ${this._lastServerError}` :
            "The server ended the call.";
          this._leaving = true;
          this._teardown({ notifyServer: false }).then(() => this._setState("ended", why));
        }
      }, 1500);
    });
    dc.addEventListener("message", (e) => {
      if (gen !== this._generation) return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        console.warn("microturn: ignoring a non-JSON data-channel message");
        return;
      }
      if (!msg || typeof msg.type !== "string") return;
      if (msg.type === "error") this._lastServerError = msg.message || msg.code || "error";
      this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    });
  }

  _onPcState(gen) {
    if (gen !== this._generation || this._leaving) return;
    const s = this.pc.connectionState;
    if (s === "connected") {
      this._clearTimers();
      this.reconnects = 0;
      this._setState("live");
    } else if (s === "disconnected") {
      if (this.state === "live") this._setState("reconnecting", "Connection interrupted, waiting for it to recover…");
      this._later(() => {
        if (gen === this._generation && this.pc && this.pc.connectionState === "disconnected") {
          this._lost(gen, "The connection dropped.");
        }
      }, DISCONNECTED_GRACE_MS);
    } else if (s === "failed") {
      this._lost(gen, "The connection failed.");
    }
  }

  /** The media path is gone: place a new call, a few times, then give up. */
  async _lost(gen, why) {
    if (gen !== this._generation || this._leaving) return;
    this._clearTimers();
    const attempt = this.reconnects++;
    if (attempt >= RECONNECT_DELAYS_MS.length) {
      this._leaving = true;
      await this._teardown({ notifyServer: true });
      this._setState("ended", `${why} Could not reconnect.`);
      return;
    }
    ++this._generation; // silence the old pc's callbacks
    this._setState("reconnecting", `${why} Reconnecting (attempt ${attempt + 1} of ${RECONNECT_DELAYS_MS.length})…`);
    await this._teardown({ notifyServer: true });
    await sleep(RECONNECT_DELAYS_MS[attempt]);
    if (this._leaving) return;
    try {
      await this._connect();
    } catch (e) {
      if (e instanceof ServerError && e.status === 0) {
        this._lost(this._generation, "The server is unreachable.");
      } else {
        this._fail(e);
      }
    }
  }

  _fail(e) {
    if (this._leaving) return;
    this._leaving = true;
    ++this._generation;
    this._teardown({ notifyServer: true });
    const msg = e instanceof ServerError ? e.message : `Could not start the call: ${e && e.message ? e.message : e}`;
    if (!(e instanceof ServerError)) console.error(e);
    // 429/503 say when to come back: the page holds Join until then
    const retryAfter = e instanceof ServerError && (e.status === 429 || e.status === 503) ? e.retryAfter : null;
    this._setState("error", msg, retryAfter);
    this.lastError = e;
  }

  _deleteCall(url) {
    if (!url || !this._token) return Promise.resolve();
    return request("DELETE", url, { token: this._token, keepalive: true }).catch(() => {});
  }

  async _teardown({ notifyServer }) {
    this._clearTimers();
    const pc = this.pc;
    const dc = this.dc;
    const url = this.callUrl;
    this.pc = null;
    this.dc = null;
    this.callId = null;
    this.callUrl = null;
    if (dc) {
      try {
        dc.close();
      } catch {
        // already closed
      }
    }
    if (pc) pc.close();
    if (notifyServer && url) await this._deleteCall(url);
  }

  /** Best effort on page unload: tell the server the call is over. */
  abandon() {
    if (!this.callUrl) return;
    this._leaving = true;
    this._deleteCall(this.callUrl);
  }
}
