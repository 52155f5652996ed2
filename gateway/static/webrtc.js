/**
 * The call over WebRTC (docs/CALL_PROTOCOL.md, "WebRTC"): the microphone goes as an Opus track with the
 * browser's echo canceller, the bot's voice comes back as a track played by an <audio> element, and the
 * call's JSON events travel on the `events` data channel. Signalling is one POST with the complete offer
 * (every ICE candidate gathered first, no trickle), answered with the complete answer.
 *
 * Anything that keeps the connection from coming up (no WebRTC, an HTTP error, ICE failing, no media
 * within the server's connect timeout) rejects `connect()`; the page then falls back to the WebSocket.
 */

const GATHER_WAIT_MS = 3000; // send what was gathered by then (an unreachable STUN server must not stall the call)
const STATS_EVERY_MS = 500;

/** Whether the server offers WebRTC for this call, with its ICE servers (null: ask failed). */
export async function webrtcConfig(started) {
  const response = await fetch(new URL(`v1/calls/${started.call_id}/webrtc`, window.location.href), {
    headers: { Authorization: `Bearer ${started.token}` },
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

export class RtcCall {
  /**
   * @param {object} options
   * @param {object} options.started  the POST /v1/calls answer: call_id, token
   * @param {string} options.language
   * @param {object} options.config   the GET .../webrtc answer: ice_servers, connect_timeout_s
   * @param {(text: string) => void} options.onEvent  a JSON event from the data channel
   * @param {(stream: MediaStream) => void} options.onAudio  the bot's voice arrived
   * @param {() => void} options.onLost  the connection went away after it was up
   */
  constructor({ started, language, config, onEvent, onAudio, onLost }) {
    this.started = started;
    this.language = language;
    this.config = config;
    this.onEvent = onEvent;
    this.onAudio = onAudio;
    this.onLost = onLost;
    this.pc = null;
    this.channel = null;
    this.up = false;
    this.closed = false;
    this.timings = {};
    this.rtc = { packetsReceived: 0, bytesReceived: 0, inboundAudioEnergy: 0, packetsSent: 0, bytesSent: 0 };
    this.statsTimer = null;
    this.t0 = performance.now();
  }

  _mark(name) {
    this.timings[name] = Math.round(performance.now() - this.t0);
  }

  /** Offer, answer, and the wait for the connection; rejects (and closes) if it does not come up in time. */
  async connect(stream) {
    const pc = new RTCPeerConnection({ iceServers: this.config.ice_servers || [] });
    this.pc = pc;
    // Opened before the offer, so that the offer carries the data channel's m-line.
    this.channel = pc.createDataChannel("events", { ordered: true });
    this.channel.onmessage = (message) => {
      if (typeof message.data === "string") this.onEvent(message.data);
    };
    this.channel.onclose = () => this._lost();
    for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
    pc.ontrack = (event) => this.onAudio(event.streams[0] || new MediaStream([event.track]));

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, GATHER_WAIT_MS);
    this._mark("offerMs");
    const url = new URL(`v1/calls/${this.started.call_id}/webrtc`, window.location.href);
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.started.token}` },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", language: this.language }),
    });
    if (!response.ok) {
      let detail = "";
      try {
        detail = (await response.json()).detail;
      } catch {
        // not JSON: the status says enough
      }
      throw new Error(`offer refused: HTTP ${response.status} ${typeof detail === "string" ? detail : ""}`.trim());
    }
    const answer = await response.json();
    this._mark("answerMs");
    await pc.setRemoteDescription(answer);
    await this._connected((this.config.connect_timeout_s || 15) * 1000);
    this._mark("connectedMs");
    this.up = true;
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this._lost();
    };
    this.statsTimer = setInterval(() => this._poll(), STATS_EVERY_MS);
  }

  _connected(timeoutMs) {
    const pc = this.pc;
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pc.connectionState === "connected") finish(null);
        else if (pc.connectionState === "failed" || pc.connectionState === "closed") finish("ICE/DTLS failed");
      };
      const finish = (error) => {
        clearTimeout(timer);
        pc.removeEventListener("connectionstatechange", check);
        if (error) reject(new Error(error));
        else resolve();
      };
      const timer = setTimeout(() => finish(`not connected within ${timeoutMs} ms`), timeoutMs);
      pc.addEventListener("connectionstatechange", check);
      check();
    });
  }

  _lost() {
    if (!this.up || this.closed) return;
    this.closed = true;
    clearInterval(this.statsTimer);
    this.onLost();
  }

  /** Sends a control event (hangup, ping) on the data channel; false if it is not open. */
  send(event) {
    if (!this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(JSON.stringify(event));
    return true;
  }

  async _poll() {
    if (!this.pc || this.closed) return;
    try {
      const report = await this.pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          this.rtc.packetsReceived = s.packetsReceived || 0;
          this.rtc.bytesReceived = s.bytesReceived || 0;
          this.rtc.inboundAudioEnergy = s.totalAudioEnergy || 0;
          this.rtc.jitterS = s.jitter;
        } else if (s.type === "outbound-rtp" && s.kind === "audio") {
          this.rtc.packetsSent = s.packetsSent || 0;
          this.rtc.bytesSent = s.bytesSent || 0;
        } else if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
          this.rtc.rttS = s.currentRoundTripTime;
        }
      });
    } catch {
      // the connection closed under us: the last numbers stand
    }
  }

  close() {
    this.closed = true;
    clearInterval(this.statsTimer);
    if (this.channel) this.channel.onclose = null;
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
  }
}
