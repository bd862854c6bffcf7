// The microturn call page: wires the DOM to a Call (call.js) and renders the server's
// data-channel events. Every server event type in the contract has a handler in HANDLERS.

import { Call } from "/static/call.js";

const $ = (id) => document.getElementById(id);

const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  ended: "Call ended",
  error: "Error",
};

// ------------------------------------------------------------------ small renderers

// C0 controls except \t and \n, DEL, C1 controls
const CONTROL_CHARS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

/** A caption column: deltas append to the current paragraph; a pause starts a new one. */
export class CaptionLog {
  constructor(el, { gapTurns = 10, maxChars = 6000 } = {}) {
    this.el = el;
    this.gapTurns = gapTurns; // 10 micro-turns = 2 s of silence -> new paragraph
    this.maxChars = maxChars;
    this.current = null;
    this.lastTurn = -Infinity;
    this.chars = 0;
  }

  /** The next delta starts a new paragraph (e.g. a new session restarts turn numbers). */
  breakParagraph() {
    this.current = null;
    this.lastTurn = -Infinity;
  }

  clear() {
    this.el.replaceChildren();
    this.current = null;
    this.lastTurn = -Infinity;
    this.chars = 0;
  }

  _stickToBottom() {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 48;
  }

  _para(cls) {
    const p = document.createElement("p");
    if (cls) p.className = cls;
    this.el.querySelector(".placeholder")?.remove();
    this.el.append(p);
    return p;
  }

  _trim() {
    while (this.chars > this.maxChars && this.el.firstElementChild && this.el.firstElementChild !== this.current) {
      this.chars -= this.el.firstElementChild.textContent.length;
      this.el.firstElementChild.remove();
    }
  }

  append(turn, delta) {
    if (typeof delta !== "string") return;
    // random or byte-level tokens can carry control characters: keep only printable text
    delta = delta.replace(CONTROL_CHARS, "");
    if (delta === "") return;
    const stick = this._stickToBottom();
    const t = Number.isFinite(turn) ? turn : this.lastTurn;
    let text = delta;
    if (!this.current || t - this.lastTurn > this.gapTurns) {
      text = delta.trimStart(); // a paragraph never starts with the separator space
      if (!text) return;
      this.current = this._para("live");
    }
    this.current.append(document.createTextNode(text));
    this.current.dataset.turn = String(t);
    this.lastTurn = t;
    this.chars += delta.length;
    this._trim();
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  }

  /** A standalone line, e.g. what the user typed. */
  note(text, cls) {
    const stick = this._stickToBottom();
    const p = this._para(cls);
    p.textContent = text;
    this.current = null;
    this.chars += text.length;
    this._trim();
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  }
}

/** Median of the last `size` values. */
export class RollingMedian {
  constructor(size = 25) {
    this.size = size;
    this.values = [];
  }

  push(v) {
    if (!Number.isFinite(v)) return;
    this.values.push(v);
    if (this.values.length > this.size) this.values.shift();
  }

  get median() {
    if (this.values.length === 0) return NaN;
    const s = [...this.values].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }
}

const fmtMs = (v) => (Number.isFinite(v) ? (v < 10 ? v.toFixed(1) : String(Math.round(v))) : "–");

const TASK_STATE_TEXT = {
  sending: "sending…",
  queued: "queued",
  streaming: "answering…",
  done: "done",
  failed: "failed",
  cancelled: "cancelled",
};
const TASK_SOURCE_TEXT = { client: "You asked", delegate: "The model asked", timer: "Timer" };
const TASK_TERMINAL = new Set(["done", "failed", "cancelled"]);

/** Background tasks: one entry per task with its state (sending/queued/streaming/done/failed/
 * cancelled), its streamed answer (deltas ordered by seq, a repeated seq from a retried task
 * ignored) and a cancel button while it runs. */
export class TaskPanel {
  constructor(list, empty, onCancel, { maxTasks = 30 } = {}) {
    this.list = list;
    this.empty = empty;
    this.onCancel = onCancel;
    this.maxTasks = maxTasks;
    this.tasks = new Map();
  }

  clear() {
    this.tasks.clear();
    this.list.replaceChildren();
    this.empty.hidden = false;
  }

  _el(tag, cls, text = "") {
    const e = document.createElement(tag);
    e.className = cls;
    e.textContent = text;
    return e;
  }

  _get(taskId, source = "") {
    const id = String(taskId ?? "task");
    let t = this.tasks.get(id);
    if (t) return t;
    const li = this._el("li", "task");
    li.dataset.taskId = id;
    const head = this._el("div", "task-head");
    const label = this._el("span", "task-id");
    const state = this._el("span", "task-state");
    const cancel = this._el("button", "link task-cancel", "Cancel");
    cancel.type = "button";
    cancel.setAttribute("aria-label", `Cancel background task ${id}`);
    cancel.addEventListener("click", () => {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
      if (!this.onCancel(id)) {
        cancel.disabled = false;
        cancel.textContent = "Cancel";
      }
    });
    head.append(label, state, cancel);
    const ask = this._el("p", "task-ask");
    ask.hidden = true;
    const body = this._el("span", "task-text");
    const error = this._el("p", "task-error");
    error.hidden = true;
    li.append(head, ask, body, error);
    this.list.append(li);
    this.empty.hidden = true;
    t = { id, li, label, state: "", stateEl: state, cancel, ask, body, error, parts: new Map() };
    this.tasks.set(id, t);
    this._label(t, source);
    this._setState(t, "queued");
    this._trim();
    return t;
  }

  _label(t, source) {
    const who = TASK_SOURCE_TEXT[source];
    t.label.textContent = who ? `${who} · ${t.id}` : `task ${t.id}`;
  }

  _setState(t, state) {
    if (TASK_TERMINAL.has(t.state)) return; // a late event never revives a finished task
    t.state = state;
    t.li.dataset.state = state;
    t.stateEl.textContent = TASK_STATE_TEXT[state] || state;
    t.cancel.hidden = TASK_TERMINAL.has(state);
  }

  /** Forget the oldest finished tasks beyond maxTasks (a long call asks a lot). */
  _trim() {
    for (const [id, t] of this.tasks) {
      if (this.tasks.size <= this.maxTasks) break;
      if (!TASK_TERMINAL.has(t.state)) continue;
      t.li.remove();
      this.tasks.delete(id);
    }
  }

  /** The page sent background.task.create and waits for the server to queue it. */
  sending(taskId, text) {
    const t = this._get(taskId, "client");
    t.ask.textContent = text;
    t.ask.hidden = false;
    this._setState(t, "sending");
  }

  created(taskId, source, text) {
    const t = this._get(taskId, source);
    this._label(t, source);
    if (text) {
      t.ask.textContent = String(text);
      t.ask.hidden = false;
    }
    if (t.state === "sending") this._setState(t, "queued");
  }

  apply(taskId, seq, delta) {
    const t = this._get(taskId);
    if (TASK_TERMINAL.has(t.state)) return;
    const n = Number(seq);
    if (t.parts.has(n)) return; // duplicate delivery after a retry
    t.parts.set(n, String(delta ?? "").replace(CONTROL_CHARS, ""));
    t.body.textContent = [...t.parts.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]).join("");
    this._setState(t, "streaming");
  }

  finish(taskId, state, error = "") {
    const t = this._get(taskId);
    if (TASK_TERMINAL.has(t.state)) return;
    if (error) {
      t.error.textContent = String(error);
      t.error.hidden = false;
    }
    this._setState(t, state);
    this._trim();
  }
}

// ------------------------------------------------------------------ page

const ui = {
  state: $("state"),
  stateText: $("state-text"),
  join: $("join"),
  leave: $("leave"),
  mic: $("mic"),
  camera: $("camera"),
  form: $("text-form"),
  input: $("text-input"),
  send: $("send"),
  untrained: $("untrained"),
  error: $("error"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
  notice: $("notice"),
  latServer: $("lat-server"),
  latStep: $("lat-step"),
  latPlayout: $("lat-playout"),
  latHint: $("lat-hint"),
  audio: $("remote-audio"),
  preview: $("preview"),
  previewPanel: $("preview-panel"),
  askForm: $("ask-form"),
  askInput: $("ask-input"),
  ask: $("ask"),
};

const userCaptions = new CaptionLog($("captions-user"));
const modelCaptions = new CaptionLog($("captions-model"));
const tasks = new TaskPanel($("tasks"), $("tasks-empty"), (taskId) =>
  sendOrComplain({ type: "background.task.cancel", task_id: taskId }, "the cancel was not sent"),
);
const serverMs = new RollingMedian();
const stepMs = new RollingMedian();
const playoutMs = new RollingMedian(); // model audio queued ahead of each turn: heard after server_ms

let call = null;
let micStream = null; // the microphone MediaStream, or null (denied / none)
let micWanted = true; // the mic toggle: send the mic or mute it
let micBlocked = false; // getUserMedia failed (denied, none, insecure page)
let camTrack = null;
let silence = null; // {ctx, track}: what we send when there is no microphone
let session = null; // the last session.created event
let joinHold = null; // interval of the Retry-After countdown on the Join button

/** The server said when to come back (429/503 with Retry-After): Join counts down and stays
 * disabled until then, so nobody hammers a full server; after it, Join works again. */
function holdJoin(seconds) {
  clearInterval(joinHold);
  let left = Math.min(Math.max(1, Math.ceil(seconds)), 600);
  const tick = () => {
    if (left <= 0) {
      clearInterval(joinHold);
      joinHold = null;
      ui.join.disabled = false;
      ui.join.textContent = "Join again";
      delete ui.join.dataset.retryIn;
      return;
    }
    ui.join.disabled = true;
    ui.join.dataset.retryIn = String(left);
    ui.join.textContent = `Join again in ${left} s`;
    left -= 1;
  };
  tick();
  joinHold = setInterval(tick, 1000);
}

function showError(message) {
  ui.errorText.textContent = message;
  ui.error.hidden = !message;
}

function showNotice(message) {
  ui.notice.textContent = message || "";
  ui.notice.hidden = !message;
}

function renderState(state, message = "") {
  ui.state.dataset.state = state;
  let text = STATE_TEXT[state] || state;
  if (state === "live" && session && session.model) text = `Live · ${session.model}`;
  if ((state === "ended" || state === "reconnecting") && message) text = `${STATE_TEXT[state]} — ${message}`;
  ui.stateText.textContent = text;
  const active = state === "connecting" || state === "live" || state === "reconnecting";
  ui.join.hidden = active;
  ui.leave.hidden = !active;
  ui.join.disabled = false;
  ui.join.textContent = state === "idle" ? "Join" : "Join again";
  if (state === "error") showError(message);
  if (!active) setChannelOpen(false);
}

function setChannelOpen(open) {
  ui.input.disabled = !open;
  ui.send.disabled = !open;
  ui.input.placeholder = open ? "Say something in text…" : "Join the call to type";
  ui.askInput.disabled = ui.ask.disabled = !open;
  ui.askInput.placeholder = open ? "e.g. what is 2 to the power of 100" : "Join the call to ask";
}

function renderMic() {
  const on = micWanted && !micBlocked;
  ui.mic.setAttribute("aria-pressed", String(on));
  ui.mic.querySelector(".label").textContent = micBlocked ? "Mic blocked" : on ? "Mic on" : "Mic muted";
  ui.mic.classList.toggle("off", !on);
}

function renderCamera() {
  const on = !!camTrack;
  ui.camera.setAttribute("aria-pressed", String(on));
  ui.camera.querySelector(".label").textContent = on ? "Camera on" : "Camera off";
  ui.camera.classList.toggle("off", !on);
  ui.previewPanel.hidden = !on;
  ui.preview.srcObject = on ? new MediaStream([camTrack]) : null;
}

function mediaErrorText(e, what) {
  const name = e && e.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return `${what} access was denied. Allow it in the browser's site settings, then try again.`;
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") return `No ${what.toLowerCase()} was found.`;
  if (name === "NotReadableError") return `The ${what.toLowerCase()} is in use by another application.`;
  return `Could not open the ${what.toLowerCase()}: ${(e && e.message) || e}`;
}

function mediaAvailable() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

async function openMic() {
  if (micStream) return micStream;
  if (!mediaAvailable()) {
    micBlocked = true;
    renderMic();
    showNotice("The microphone needs a secure page (HTTPS or localhost). You can still listen and type.");
    return null;
  }
  try {
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      video: false,
    });
    micBlocked = false;
    const track = micStream.getAudioTracks()[0];
    track.enabled = micWanted;
    track.addEventListener("ended", () => {
      micStream = null;
      micBlocked = true;
      renderMic();
      showNotice("The microphone was disconnected. You can still listen and type.");
    });
    showNotice("");
    return micStream;
  } catch (e) {
    micStream = null;
    micBlocked = true;
    showNotice(`${mediaErrorText(e, "Microphone")} You can still listen and type.`);
    return null;
  } finally {
    renderMic();
  }
}

function closeMic() {
  if (micStream) for (const t of micStream.getTracks()) t.stop();
  micStream = null;
  if (silence) {
    silence.ctx.close().catch(() => {});
    silence = null;
  }
}

/** Without a microphone, send digital silence: the server's media clock (and so the model's
 * micro-turns) runs on the uplink audio, so a listen-and-type user still gets answers and
 * is not taken for a vanished client. Must be called inside a user gesture (AudioContext). */
function silentTrack() {
  if (!silence) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    const ctx = new Ctx();
    const dest = ctx.createMediaStreamDestination();
    const src = ctx.createConstantSource();
    src.offset.value = 0;
    src.connect(dest);
    src.start();
    ctx.resume().catch(() => {});
    silence = { ctx, track: dest.stream.getAudioTracks()[0] };
  }
  return silence.track;
}

// ------------------------------------------------------------------ server events

const HANDLERS = {
  "session.created"(m) {
    if (session && session.call_id !== m.call_id) {
      // a reconnect placed a new call: new model session, turn numbers start again
      userCaptions.breakParagraph();
      modelCaptions.breakParagraph();
      serverMs.values = [];
      stepMs.values = [];
      playoutMs.values = [];
      showNotice("Reconnected. This is a new session: the model does not remember the conversation so far.");
    }
    session = m;
    ui.untrained.hidden = m.trained !== false;
    if (call && call.state === "live") renderState("live");
  },
  "transcript.user.delta"(m) {
    userCaptions.append(m.turn, m.delta);
  },
  "response.text.delta"(m) {
    modelCaptions.append(m.turn, m.delta);
  },
  "background.task.created"(m) {
    tasks.created(m.task_id, m.source, m.text);
  },
  "background.task.delta"(m) {
    tasks.apply(m.task_id, m.seq, m.delta);
  },
  "background.task.done"(m) {
    tasks.finish(m.task_id, "done");
  },
  "background.task.failed"(m) {
    tasks.finish(m.task_id, "failed", m.error || "the background task failed");
  },
  "background.task.cancelled"(m) {
    tasks.finish(m.task_id, "cancelled");
  },
  "metrics.latency"(m) {
    serverMs.push(Number(m.server_ms));
    stepMs.push(Number(m.step_ms));
    ui.latServer.textContent = fmtMs(serverMs.median);
    ui.latStep.textContent = fmtMs(stepMs.median);
    playoutMs.push(Number(m.playout_ms ?? 0));
    ui.latPlayout.textContent = fmtMs(playoutMs.median);
    ui.latHint.textContent = `median of the last ${serverMs.values.length} turns (turn ${m.turn})`;
  },
  "session.moved"(m) {
    // a model worker drained or died: the session was rebuilt on another one
    const gap = Number(m.gap_ms) > 0 ? ` after ${fmtMs(Number(m.gap_ms))} ms of silence` : "";
    showNotice(`The model moved to another server${gap}; the conversation goes on.`);
  },
  error(m) {
    showError(m.message || m.code || "The server reported an error.");
  },
};

function onMessage(msg) {
  const h = HANDLERS[msg.type];
  if (h) h(msg);
  else console.debug("microturn: unhandled event", msg.type);
}

// ------------------------------------------------------------------ actions

async function join() {
  if (typeof RTCPeerConnection === "undefined") {
    renderState("error", "This browser does not support WebRTC calls.");
    return;
  }
  ui.join.disabled = true;
  showError("");
  showNotice("");
  session = null;
  ui.untrained.hidden = true;
  userCaptions.clear();
  modelCaptions.clear();
  tasks.clear();
  serverMs.values = [];
  stepMs.values = [];
  ui.latServer.textContent = ui.latStep.textContent = "–";
  ui.latHint.textContent = "median of the last turns";
  renderState("connecting");

  await openMic();
  // Play the model from inside the click's user gesture, so autoplay rules allow it.
  ui.audio.play().catch(() => {});

  call = new Call();
  window.__microturn.call = call;
  call.addEventListener("state", (e) => {
    const { state, message, retryAfter } = e.detail;
    renderState(state, message);
    if (state === "error" && retryAfter) holdJoin(retryAfter);
    if (state === "ended" || state === "error") releaseMedia();
    // the server's parting error event is already in the state line: no second copy
    if (state === "ended" && ui.errorText.textContent && message.includes(ui.errorText.textContent)) showError("");
  });
  call.addEventListener("message", (e) => onMessage(e.detail));
  call.addEventListener("channel", (e) => setChannelOpen(e.detail.open));
  call.addEventListener("track", (e) => {
    if (e.detail.track.kind !== "audio") return;
    ui.audio.srcObject = e.detail.stream;
    ui.audio.play().catch(() => {
      showNotice("Tap anywhere to hear the model (the browser blocked autoplay).");
      document.addEventListener("click", () => ui.audio.play().then(() => showNotice("")).catch(() => {}), {
        once: true,
      });
    });
  });
  const micTrack = micStream ? micStream.getAudioTracks()[0] : silentTrack();
  await call.start({ micTrack, camTrack });
}

/** The call is over: stop the mic and camera (the browser's recording light goes off). */
function releaseMedia() {
  ui.audio.srcObject = null;
  closeMic();
  if (camTrack) {
    camTrack.stop();
    camTrack = null;
  }
  renderMic();
  renderCamera();
}

async function leave() {
  if (!call) return;
  ui.leave.disabled = true;
  await call.hangup();
  ui.leave.disabled = false;
}

async function toggleMic() {
  if (micBlocked || (micWanted && !micStream && call && call.pc)) {
    // blocked before: ask again (the user may have changed the site permission)
    micWanted = true;
    const s = await openMic();
    if (s && call && call.pc) await call.setMicTrack(s.getAudioTracks()[0]);
  } else {
    micWanted = !micWanted;
    if (micStream) for (const t of micStream.getAudioTracks()) t.enabled = micWanted;
  }
  renderMic();
}

async function toggleCamera() {
  if (camTrack) {
    const t = camTrack;
    camTrack = null;
    if (call) await call.setCameraTrack(null);
    t.stop();
    renderCamera();
    return;
  }
  if (!mediaAvailable()) {
    showNotice("The camera needs a secure page (HTTPS or localhost).");
    return;
  }
  ui.camera.disabled = true;
  try {
    // The model looks at <= 1 frame per micro-turn at 160x120: ask for little.
    const s = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 10, max: 15 } },
      audio: false,
    });
    camTrack = s.getVideoTracks()[0];
    camTrack.addEventListener("ended", () => {
      camTrack = null;
      if (call) call.setCameraTrack(null);
      renderCamera();
    });
    if (call) await call.setCameraTrack(camTrack);
  } catch (e) {
    showNotice(mediaErrorText(e, "Camera"));
  } finally {
    ui.camera.disabled = false;
    renderCamera();
  }
}

function sendText(ev) {
  ev.preventDefault();
  const text = ui.input.value.trim();
  if (!text) return;
  if (!call || !call.send({ type: "input_text.append", text })) {
    showError("Not connected: the message was not sent.");
    return;
  }
  userCaptions.note(text, "typed");
  ui.input.value = "";
  ui.input.focus();
}

/** Send a client event; false (and an error banner) when the channel is not open. */
function sendOrComplain(obj, what) {
  if (call && call.send(obj)) return true;
  showError(`Not connected: ${what}.`);
  return false;
}

function newTaskId() {
  const b = crypto.getRandomValues(new Uint8Array(6)); // works on plain-http pages too
  return "web-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function pageTimeZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || null;
  } catch {
    return null;
  }
}

/** "Ask in the background": the server queues it with the conversation so far as context. */
function askBackground(ev) {
  ev.preventDefault();
  const text = ui.askInput.value.trim();
  if (!text) return;
  const msg = { type: "background.task.create", task_id: newTaskId(), text };
  const tz = pageTimeZone();
  if (tz) msg.timezone = tz;
  if (!sendOrComplain(msg, "the question was not sent")) return;
  tasks.sending(msg.task_id, text);
  ui.askInput.value = "";
  ui.askInput.focus();
}

// ------------------------------------------------------------------ boot

// Test hook (and handy in the console): the live call and its RTCPeerConnection.
window.__microturn = {
  call: null,
  get pc() {
    return this.call ? this.call.pc : null;
  },
  get state() {
    return ui.state.dataset.state;
  },
  /** Render a server event as if it came over the data channel (tests, debugging). */
  dispatch: onMessage,
};

ui.join.addEventListener("click", join);
ui.leave.addEventListener("click", leave);
ui.mic.addEventListener("click", toggleMic);
ui.camera.addEventListener("click", toggleCamera);
ui.form.addEventListener("submit", sendText);
ui.askForm.addEventListener("submit", askBackground);
ui.errorDismiss.addEventListener("click", () => showError(""));
window.addEventListener("pagehide", () => call && call.abandon());

renderState("idle");
renderMic();
renderCamera();
