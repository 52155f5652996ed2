/**
 * The browser's two audio paths for a call.
 *
 * Capture: getUserMedia (with the browser's echo canceller, so the bot does not hear itself) ->
 * MediaStreamSource -> AudioWorklet (capture-worklet.js: low-pass, 16 kHz, PCM16LE, 20 ms frames).
 *
 * Playback: the bot's PCM16 frames are raised to the context rate by one streaming converter (no
 * clicks at frame borders) and each frame becomes an AudioBufferSourceNode started exactly where
 * the previous one ends on the AudioContext clock. The first frame of a burst starts a jitter
 * buffer's length in the future, so frames arriving a little late still meet their slot. Every
 * scheduled source is kept until it ends, so barge-in can stop them all at once.
 */
import { RateConverter, pcm16ToFloat } from "./resampler.js";

export const CALL_RATE_HZ = 16000;
export const FRAME_MS = 20;
/** How far ahead of "now" a burst of bot audio starts: absorbs network jitter. */
export const JITTER_BUFFER_S = 0.06;

export const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

/** The microphone through the capture worklet; `onFrame(pcmArrayBuffer, rms)` gets 20 ms frames. */
export class Microphone {
  constructor(ctx, stream, onFrame) {
    this.ctx = ctx;
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    // No outputs: the node is a sink, pulled by the rendering thread without being audible.
    this.node = new AudioWorkletNode(ctx, "voiceai-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { targetRateHz: CALL_RATE_HZ, frameMs: FRAME_MS },
    });
    this.node.port.onmessage = (event) => onFrame(event.data.pcm, event.data.rms);
    this.source.connect(this.node);
  }

  static async loadWorklet(ctx) {
    await ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
  }

  stop() {
    this.node.port.postMessage("stop");
    this.node.port.onmessage = null;
    this.source.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
  }
}

/** Gapless playback of the bot's PCM16 frames, with an immediate stop for barge-in. */
export class Player {
  constructor(ctx, rateHz = CALL_RATE_HZ) {
    this.ctx = ctx;
    this.converter = new RateConverter(rateHz, ctx.sampleRate);
    this.output = ctx.createGain();
    this.output.connect(ctx.destination);
    this.sources = new Set();
    this.nextTime = 0;
    this.inBurst = false; // between the first frame of a reply and its drain() or stop()
    this.oddByte = null; // a frame of odd length leaves one byte for the next
    this.underruns = 0;
    this.framesPlayed = 0;
    this.stops = 0;
  }

  /** @param {ArrayBuffer} data PCM16LE at the call rate */
  push(data) {
    let bytes = new Uint8Array(data);
    if (this.oddByte !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.oddByte;
      joined.set(bytes, 1);
      bytes = joined;
      this.oddByte = null;
    }
    if (bytes.length % 2) {
      this.oddByte = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (bytes.length === 0) return;
    this._schedule(this.converter.process(pcm16ToFloat(bytes)));
    this.framesPlayed += 1;
  }

  /** The reply is complete: play what is still inside the converter's filter. */
  drain() {
    const tail = this.converter.flush();
    if (this.inBurst) this._schedule(tail);
    this.inBurst = false;
  }

  /** Barge-in: silence now, and forget everything queued. */
  stop() {
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // never started or already stopped: nothing to silence
      }
      source.disconnect();
    }
    this.sources.clear();
    this.converter.reset();
    this.oddByte = null;
    this.nextTime = 0;
    this.inBurst = false;
    this.stops += 1;
  }

  /** Seconds of audio scheduled but not yet played. */
  get pendingS() {
    return Math.max(0, this.nextTime - this.ctx.currentTime);
  }

  _schedule(samples) {
    if (samples.length === 0) return;
    const now = this.ctx.currentTime;
    if (!this.inBurst || this.nextTime < now + 0.005) {
      // A new reply, or the network fell behind the clock: start a jitter buffer ahead of now.
      if (this.inBurst) this.underruns += 1;
      // On a whole sample frame, so that the frames that follow start on whole frames too; and
      // never over the tail of the previous reply if that is still playing.
      const start = Math.round((now + JITTER_BUFFER_S) * this.ctx.sampleRate) / this.ctx.sampleRate;
      this.nextTime = Math.max(this.nextTime, start);
      this.inBurst = true;
    }
    const buffer = this.ctx.createBuffer(1, samples.length, this.ctx.sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    source.onended = () => {
      this.sources.delete(source);
      source.disconnect();
    };
    source.start(this.nextTime);
    this.nextTime += buffer.duration;
    this.sources.add(source);
  }
}

/** The microphone level for the meter when the audio itself goes over WebRTC (no capture worklet). */
export class LevelMeter {
  constructor(ctx, stream, onLevel, intervalMs = 100) {
    this.source = ctx.createMediaStreamSource(stream);
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
    this.timer = setInterval(() => {
      this.analyser.getFloatTimeDomainData(this.samples);
      let energy = 0;
      for (const v of this.samples) energy += v * v;
      onLevel(Math.sqrt(energy / this.samples.length));
    }, intervalMs);
  }

  stop() {
    clearInterval(this.timer);
    this.source.disconnect();
  }
}
