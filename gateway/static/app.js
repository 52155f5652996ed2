/**
 * The call page (docs/CALL_PROTOCOL.md). WebRTC first (webrtc.js): Opus both ways, the browser's own
 * jitter buffer and echo canceller, events on a data channel. If the browser or the server has no
 * WebRTC, or it does not connect in time, the call falls back to one WebSocket: binary frames carry
 * PCM16LE audio both ways at 16 kHz, text frames the same JSON events. The events drive the state
 * indicator, the transcript and (WebSocket only) the playback, stopped on `barge_in`.
 */
import { CALL_RATE_HZ, LevelMeter, MIC_CONSTRAINTS, Microphone, Player } from "./audio.js";
import { STRINGS, hasArabic } from "./i18n.js";
import { RtcCall, webrtcConfig } from "./webrtc.js";

const $ = (id) => document.getElementById(id);
const ui = {
  language: $("language"),
  call: $("call"),
  hangup: $("hangup"),
  state: $("state"),
  stateLabel: document.querySelector("#state .label"),
  level: $("level-bar"),
  alert: $("alert"),
  transcript: $("transcript"),
  scroller: $("transcript-scroller"),
  empty: $("transcript-empty"),
  notices: $("notices"),
  transport: $("transport"),
  remoteAudio: $("remote-audio"),
};

const HANGUP_WAIT_MS = 2000;
const NOTICE_MS = 8000;
const MAX_UNSENT_BYTES = 32000; // one second of caller audio waiting in the socket

let lang = initialLanguage();
let uiState = "idle";
let call = null;
let lastCall = null; // the most recent call, kept after it ends for voiceai.stats()

function initialLanguage() {
  const saved = safeStorage("get");
  if (saved === "en" || saved === "ar") return saved;
  return (navigator.language || "en").toLowerCase().startsWith("ar") ? "ar" : "en";
}

function safeStorage(op, value) {
  try {
    if (op === "get") return localStorage.getItem("voiceai.language");
    localStorage.setItem("voiceai.language", value);
  } catch {
    // storage disabled (private mode, sandbox): the choice just is not remembered
  }
  return null;
}

function t(key) {
  return key.split(".").reduce((node, part) => (node == null ? undefined : node[part]), STRINGS[lang]) ?? key;
}

// ---- page language and state ---------------------------------------------------------------

function applyLanguage(next) {
  lang = next;
  ui.language.value = next;
  const root = document.documentElement;
  root.lang = next;
  root.dir = next === "ar" ? "rtl" : "ltr";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-title]")) node.title = t(node.dataset.i18nTitle);
  for (const node of document.querySelectorAll("[data-unit]")) {
    node.textContent = `${node.parentElement.dataset.e2eMs} ${t(node.dataset.unit)}`;
  }
  document.title = t("title");
  setState(uiState);
}

function setState(state) {
  uiState = state;
  ui.state.dataset.state = state;
  ui.stateLabel.textContent = t(`states.${state}`);
  document.body.dataset.callState = state;
}

function setBusy(inCall) {
  ui.call.disabled = inCall;
  ui.hangup.disabled = !inCall;
  ui.language.disabled = inCall; // the language is fixed for the whole call
  if (!inCall) ui.level.style.inlineSize = "0%";
}

function showAlert(message) {
  ui.alert.textContent = message;
  ui.alert.hidden = false;
}

function clearAlert() {
  ui.alert.hidden = true;
  ui.alert.textContent = "";
}

/** A notice that does not block the call: fades after a few seconds, or on Dismiss. */
function notice(title, detail, kind = "info") {
  const item = document.createElement("div");
  item.className = `notice ${kind}`;
  const text = document.createElement("p");
  const strong = document.createElement("strong");
  strong.textContent = title;
  text.append(strong);
  if (detail) {
    const body = document.createElement("span");
    body.dir = "auto";
    body.textContent = ` ${detail}`;
    text.append(body);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "notice-close";
  close.setAttribute("aria-label", t("errors.dismiss"));
  close.textContent = "×";
  close.addEventListener("click", () => item.remove());
  item.append(text, close);
  ui.notices.append(item);
  setTimeout(() => item.remove(), NOTICE_MS);
}

function showLevel(rms) {
  // -60 dBFS .. 0 dBFS onto 0..100 %.
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  ui.level.style.inlineSize = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100)).toFixed(0)}%`;
}

// ---- transcript -----------------------------------------------------------------------------

/** The conversation as bubbles: the caller's (interim grey, then final) and the bot's (phrases). */
class Transcript {
  constructor(list) {
    this.list = list;
    this.caller = null; // the caller bubble being spoken
    this.bot = null; // the bot bubble being spoken
    this.botByTurn = new Map(); // turn -> its last bot bubble (for `turn` and `barge_in`)
    this.following = true;
    ui.scroller.addEventListener("scroll", () => {
      const s = ui.scroller;
      this.following = s.scrollHeight - s.scrollTop - s.clientHeight < 48;
    });
  }

  clear() {
    this.list.replaceChildren();
    this.caller = null;
    this.bot = null;
    this.botByTurn.clear();
    this.following = true;
    ui.empty.hidden = false;
  }

  interim(text) {
    const bubble = this.caller ?? this._openCaller();
    bubble.interim.textContent = text;
    this._textChanged(bubble);
  }

  final(text) {
    const bubble = this.caller ?? this._openCaller();
    const clean = text.trim();
    if (clean) bubble.finals.textContent = bubble.finals.textContent ? `${bubble.finals.textContent} ${clean}` : clean;
    bubble.interim.textContent = "";
    this._textChanged(bubble);
  }

  botPhrase(turn, text) {
    this.caller = null; // the bot answers: the caller's next words go in a new bubble
    if (!this.bot || this.bot.turn !== turn) {
      this.bot = this._bubble("bot", turn);
      this.botByTurn.set(turn, this.bot);
    }
    const body = this.bot.finals;
    body.textContent = body.textContent ? `${body.textContent} ${text.trim()}` : text.trim();
    this._textChanged(this.bot);
  }

  /** The bot stopped speaking (its reply drained or was cut): its next phrase starts a new bubble. */
  botDone() {
    this.bot = null;
  }

  /** Barge-in: mark the reply, and grey out the words the caller never heard (`played_text`). */
  interrupted(turn, playedText) {
    const bubble = this.botByTurn.get(turn) ?? this._lastBot();
    this.bot = null;
    if (!bubble || bubble.el.querySelector(".marker")) return;
    bubble.el.classList.add("was-interrupted");
    const marker = document.createElement("span");
    marker.className = "marker";
    marker.dataset.i18n = "interrupted";
    marker.textContent = t("interrupted");
    bubble.el.querySelector(".who").append(marker);
    const finals = bubble.el.querySelector(".final");
    const said = finals.textContent.replace(/\s+/g, " ").trim();
    const heard = (playedText || "").replace(/\s+/g, " ").trim();
    if (said.startsWith(heard) && said.length > heard.length) {
      finals.textContent = heard;
      const unheard = document.createElement("span");
      unheard.className = "unheard";
      unheard.dataset.i18nTitle = "unheard";
      unheard.title = t("unheard");
      unheard.textContent = `${heard ? " " : ""}${said.slice(heard.length).trim()}`;
      finals.after(unheard);
    }
    this._scroll();
  }

  turnDone(event) {
    const bubble = this.botByTurn.get(event.turn);
    const e2eMs = event.stages ? event.stages.e2e_ms : null;
    if (!bubble || e2eMs == null || bubble.el.querySelector(".latency")) return;
    const meta = document.createElement("div");
    meta.className = "latency";
    meta.dataset.e2eMs = String(Math.round(e2eMs));
    const label = document.createElement("span");
    label.dataset.i18n = "latency";
    label.textContent = t("latency");
    const value = document.createElement("span");
    value.className = "value";
    value.dataset.unit = "ms";
    value.textContent = `${Math.round(e2eMs)} ${t("ms")}`;
    meta.append(label, ": ", value);
    meta.title = Object.entries(event.stages)
      .filter(([, ms]) => ms != null)
      .map(([stage, ms]) => `${stage}: ${Math.round(ms)}`)
      .join("\n");
    bubble.el.append(meta);
    this._scroll();
  }

  _openCaller() {
    this.caller = this._bubble("caller", null);
    return this.caller;
  }

  _lastBot() {
    const els = this.list.querySelectorAll(".msg.bot");
    const last = els[els.length - 1];
    return last ? { el: last } : null;
  }

  _bubble(kind, turn) {
    ui.empty.hidden = true;
    const el = document.createElement("li");
    el.className = `msg ${kind}`;
    const who = document.createElement("div");
    who.className = "who";
    const name = document.createElement("span");
    name.dataset.i18n = kind === "bot" ? "bot" : "you";
    name.textContent = t(name.dataset.i18n);
    who.append(name);
    // dir="auto": each message takes its direction from its own first strong letter, so an Arabic
    // reply reads right-to-left even on the English page, and English inside Arabic stays intact.
    const text = document.createElement("p");
    text.className = "text";
    text.dir = "auto";
    const finals = document.createElement("span");
    finals.className = "final";
    const interim = document.createElement("span");
    interim.className = "interim";
    interim.setAttribute("aria-hidden", "true"); // screen readers hear the final words only
    text.append(finals, interim);
    el.append(who, text);
    this.list.append(el);
    this._scroll();
    return { el, text, finals, interim, turn };
  }

  _textChanged(bubble) {
    const all = `${bubble.finals.textContent} ${bubble.interim.textContent}`;
    if (hasArabic(all)) bubble.text.lang = "ar";
    else bubble.text.removeAttribute("lang");
    bubble.interim.textContent = bubble.interim.textContent.trim();
    if (bubble.finals.textContent && bubble.interim.textContent) bubble.interim.dataset.sep = "1";
    else delete bubble.interim.dataset.sep;
    this._scroll();
  }

  _scroll() {
    // Follow the conversation, unless the reader has scrolled up to read something older.
    if (this.following) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }
}

const transcript = new Transcript(ui.transcript);

// ---- one call -------------------------------------------------------------------------------

async function startCall(language) {
  // Relative to the page, so a gateway behind a path prefix still works. The gateway mints a call
  // token (for this page's tenant, or for the signed-in user's) that joins exactly this call, once.
  const response = await fetch(new URL("v1/calls", window.location.href), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ language }),
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

function wsUrl(started) {
  const url = new URL(started.ws_path.replace(/^\//, ""), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("sample_rate_hz", String(CALL_RATE_HZ));
  url.searchParams.set("token", started.token);
  url.hash = "";
  return url.toString();
}

function showTransport(name) {
  ui.transport.textContent = name ? { webrtc: "WebRTC", websocket: "WebSocket" }[name] : "";
  ui.transport.dataset.transport = name || "";
  ui.transport.hidden = !name;
}

class Call {
  constructor(language) {
    this.language = language;
    this.ctx = null;
    this.stream = null;
    this.mic = null;
    this.level = null;
    this.player = null;
    this.ws = null;
    this.rtc = null;
    this.over = false; // torn down (or tearing down)
    this.serverEnded = false; // call.ended arrived
    this.userHungUp = false;
    this.stats = {
      transport: null, fallback: null, rtc: null, timings: {},
      framesSent: 0, bytesSent: 0, framesDropped: 0, framesReceived: 0, bytesReceived: 0, events: [], states: [],
    };
  }

  async start() {
    setBusy(true);
    clearAlert();
    setState("connecting");
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) return this.fail(t("errors.insecure"));
    if (typeof AudioWorkletNode === "undefined") return this.fail(t("errors.unsupported"));
    // Created inside the click, before any await, so autoplay rules let it run.
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      return this.fail(micErrorMessage(err));
    }
    if (this.over) return stream.getTracks().forEach((track) => track.stop());
    this.stream = stream;
    let started;
    try {
      started = await startCall(this.language);
    } catch (err) {
      return this.fail(`${t("errors.connection_failed")} ${err.message || err}`);
    }
    if (this.over) return this.teardown();
    if (await this.tryWebRtc(started, stream)) return;
    if (this.over) return this.teardown();
    try {
      // A call whose offer was sent is joined (its token is spent): the WebSocket gets a call of its own.
      if (started.offered) started = await startCall(this.language);
    } catch (err) {
      return this.fail(`${t("errors.connection_failed")} ${err.message || err}`);
    }
    try {
      await Microphone.loadWorklet(this.ctx);
      if (this.ctx.state !== "running") await this.ctx.resume();
      this.player = new Player(this.ctx, CALL_RATE_HZ);
      this.mic = new Microphone(this.ctx, stream, (pcm, rms) => this.onMicFrame(pcm, rms));
    } catch (err) {
      stream.getTracks().forEach((track) => track.stop());
      return this.fail(`${t("errors.audio_failed")} ${err.message || err}`);
    }
    if (this.over) return this.teardown();
    this.connect(started);
  }

  /** The call over WebRTC; false (nothing left open) when the page should use the WebSocket instead. */
  async tryWebRtc(started, stream) {
    if (typeof RTCPeerConnection === "undefined") {
      this.stats.fallback = "no RTCPeerConnection in this browser";
      return false;
    }
    let config;
    try {
      config = await webrtcConfig(started);
    } catch (err) {
      this.stats.fallback = `config: ${err.message || err}`;
      return false;
    }
    if (!config.enabled) {
      this.stats.fallback = "disabled on the server";
      return false;
    }
    const rtc = new RtcCall({
      started,
      language: this.language,
      config,
      onEvent: (text) => this.onEvent(text),
      onAudio: (remote) => {
        ui.remoteAudio.srcObject = remote;
        ui.remoteAudio.play().catch(() => {}); // autoplay: the Call click already allowed it
      },
      onLost: () => this.onClose({ code: 0, reason: "" }),
    });
    this.rtc = rtc;
    started.offered = true;
    try {
      await rtc.connect(stream);
    } catch (err) {
      console.info("WebRTC did not connect; using the WebSocket", err.message || err);
      this.stats.fallback = err.message || String(err);
      this.stats.timings = rtc.timings;
      rtc.close();
      this.rtc = null;
      ui.remoteAudio.srcObject = null;
      return false;
    }
    this.stats.transport = "webrtc";
    this.stats.timings = rtc.timings;
    this.stats.rtc = rtc.rtc; // live: updated by the stats poll
    this.opened = true;
    showTransport("webrtc");
    if (this.over) {
      rtc.send({ type: "hangup" });
      rtc.close();
      return true;
    }
    this.level = new LevelMeter(this.ctx, stream, showLevel);
    return true;
  }

  connect(started) {
    const target = wsUrl(started);
    this.stats.transport = "websocket";
    showTransport("websocket");
    const ws = new WebSocket(target);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => {
      this.opened = true;
    };
    ws.onmessage = (message) => {
      if (typeof message.data === "string") this.onEvent(message.data);
      else this.onAudio(message.data);
    };
    ws.onclose = (close) => this.onClose(close);
    // onerror carries no detail; onclose always follows it with the code.
  }

  onMicFrame(pcm, rms) {
    showLevel(rms);
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.over) return;
    if (ws.bufferedAmount > MAX_UNSENT_BYTES) {
      // The network cannot keep up: drop audio rather than let the bot hear the caller later and later.
      this.stats.framesDropped += 1;
      return;
    }
    ws.send(pcm);
    this.stats.framesSent += 1;
    this.stats.bytesSent += pcm.byteLength;
  }

  onAudio(data) {
    this.stats.framesReceived += 1;
    this.stats.bytesReceived += data.byteLength;
    if (this.player && !this.over) this.player.push(data);
  }

  onEvent(text) {
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      return; // the protocol only sends JSON; ignore anything else
    }
    remember(this.stats.events, event.type);
    switch (event.type) {
      case "call.started":
        this.callId = event.call_id;
        document.body.dataset.callId = event.call_id;
        break;
      case "state":
        this.onState(event.state);
        break;
      case "transcript.interim":
        transcript.interim(event.text || "");
        break;
      case "transcript.final":
        transcript.final(event.text || "");
        break;
      case "bot.text":
        transcript.botPhrase(event.turn, event.text || "");
        break;
      case "barge_in":
        // The server already stopped sending; what we buffered must not play on over the caller.
        this.player?.stop();
        transcript.interrupted(event.turn, event.played_text);
        break;
      case "turn":
        transcript.turnDone(event);
        break;
      case "error":
        notice(t("errors.server_notice"), event.message || event.code, event.fatal ? "error" : "info");
        break;
      case "call.ended":
        this.serverEnded = true;
        this.endReason = event.reason;
        break;
      default:
        break; // pong and future events
    }
  }

  onState(state) {
    remember(this.stats.states, state);
    if (this.over) return;
    if (state === "listening") {
      this.player?.drain(); // the reply was sent in full: play the converter's last millisecond too
      transcript.botDone();
    } else if (state === "interrupted" || state === "user_speaking") {
      transcript.botDone();
    }
    if (state !== "ended") setState(state);
  }

  onClose(close) {
    const reason = this.endReason;
    if (this.serverEnded || this.userHungUp) {
      this.teardown({ letPlaybackFinish: this.serverEnded && !this.userHungUp });
      if (reason && STRINGS[lang].ended[reason] && !this.userHungUp) notice(t("states.ended"), t(`ended.${reason}`));
      return;
    }
    if (this.rtc) showAlert(`${t("errors.ws_lost")}.`);
    else if ([1008, 4401, 4403, 4409].includes(close.code)) showAlert(`${t("errors.ws_refused")} ${close.reason || close.code}`);
    else if (!this.opened) showAlert(t("errors.ws_unreachable"));
    else showAlert(`${t("errors.ws_lost")} (${close.code}${close.reason ? `: ${close.reason}` : ""}).`);
    this.teardown();
  }

  hangup() {
    if (this.over) return;
    this.userHungUp = true;
    const rtc = this.rtc;
    if (rtc) {
      // The server answers with call.ended and closes the connection; do not wait on it forever.
      if (rtc.send({ type: "hangup" })) setTimeout(() => rtc.close(), HANGUP_WAIT_MS);
      else rtc.close();
    }
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "hangup" }));
      // The server answers with call.ended and closes; do not wait on it forever.
      setTimeout(() => ws.readyState !== WebSocket.CLOSED && ws.close(1000, "hangup"), HANGUP_WAIT_MS);
    } else if (ws) {
      ws.close(1000, "hangup");
    }
    this.teardown();
  }

  fail(message) {
    showAlert(message);
    this.teardown();
  }

  /** Stops capture now; playback now too, unless the server ended the call after its last words. */
  teardown({ letPlaybackFinish = false } = {}) {
    if (this.over) return;
    this.over = true;
    this.mic?.stop();
    this.mic = null;
    this.level?.stop();
    this.level = null;
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    if (this.rtc && !this.userHungUp) this.rtc.close(); // a hang-up closes it once call.ended came
    if (this.rtc) ui.remoteAudio.srcObject = null;
    const ctx = this.ctx;
    const player = this.player;
    if (ctx) {
      const waitMs = letPlaybackFinish && player ? player.pendingS * 1000 + 200 : 0;
      if (!letPlaybackFinish) player?.stop();
      setTimeout(() => ctx.close().catch(() => {}), waitMs);
    }
    transcript.botDone();
    transcript.caller = null;
    setState("ended");
    setBusy(false);
    if (call === this) call = null;
  }
}

/** Appends to a bounded history (the last 500 items) kept for voiceai.stats(). */
function remember(list, item) {
  list.push(item);
  if (list.length > 500) list.shift();
}

function micErrorMessage(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return t("errors.mic_denied");
    case "NotFoundError":
    case "OverconstrainedError":
      return t("errors.mic_missing");
    case "NotReadableError":
    case "AbortError":
      return t("errors.mic_busy");
    default:
      return `${t("errors.audio_failed")} ${(err && (err.message || err.name)) || err}`;
  }
}

// ---- wiring ---------------------------------------------------------------------------------

ui.language.addEventListener("change", () => {
  applyLanguage(ui.language.value);
  safeStorage("set", ui.language.value);
});

ui.call.addEventListener("click", () => {
  if (call) return;
  transcript.clear();
  showTransport(null);
  call = new Call(lang);
  lastCall = call;
  const started = call;
  started.start().catch((err) => started.fail(`${t("errors.audio_failed")} ${err.message || err}`));
});

ui.hangup.addEventListener("click", () => call?.hangup());

window.addEventListener("pagehide", () => call?.hangup());

/** Read-only numbers for tests and for curious operators (open the console, type voiceai.stats()). */
window.voiceai = {
  stats() {
    const c = call ?? lastCall;
    const player = c?.player;
    return {
      state: uiState,
      language: lang,
      contextRateHz: c?.ctx?.sampleRate ?? null,
      ...(c ? c.stats : {}),
      scheduledSources: player ? player.sources.size : 0,
      pendingPlaybackS: player ? player.pendingS : 0,
      playbackStops: player ? player.stops : 0,
      framesPlayed: player ? player.framesPlayed : 0,
      underruns: player ? player.underruns : 0,
    };
  },
};

applyLanguage(lang);
setBusy(false);
