/**
 * AudioWorklet processor: microphone at the AudioContext rate -> low-passed 16 kHz -> PCM16LE
 * frames of `frameMs` (20 ms = 640 bytes), posted to the main thread, which sends them on the
 * call WebSocket. Runs on the audio rendering thread, so the capture never waits on the page's
 * main thread (unlike the deprecated ScriptProcessorNode).
 */
import { RateConverter, floatToPcm16 } from "./resampler.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRateHz, frameMs } = options.processorOptions;
    // `sampleRate` is the AudioContext's rate, a global of the worklet scope.
    this.converter = new RateConverter(sampleRate, targetRateHz);
    this.frameSamples = Math.round((targetRateHz * frameMs) / 1000);
    this.frame = new Float32Array(this.frameSamples);
    this.filled = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no input connected (yet)
    const n = channels[0].length;
    if (this.mono.length < n) this.mono = new Float32Array(n);
    const mono = this.mono.subarray(0, n);
    if (channels.length === 1) {
      mono.set(channels[0]);
    } else {
      mono.fill(0);
      for (const ch of channels) for (let i = 0; i < n; i++) mono[i] += ch[i] / channels.length;
    }
    const out = this.converter.process(mono);
    let i = 0;
    while (i < out.length) {
      const take = Math.min(out.length - i, this.frameSamples - this.filled);
      this.frame.set(out.subarray(i, i + take), this.filled);
      this.filled += take;
      i += take;
      if (this.filled === this.frameSamples) this._post();
    }
    return true;
  }

  _post() {
    let energy = 0;
    for (let i = 0; i < this.frameSamples; i++) energy += this.frame[i] * this.frame[i];
    const pcm = new ArrayBuffer(this.frameSamples * 2);
    floatToPcm16(this.frame, new DataView(pcm));
    // Transfer, not copy: the buffer moves to the main thread without touching the audio thread again.
    this.port.postMessage({ pcm, rms: Math.sqrt(energy / this.frameSamples) }, [pcm]);
    this.filled = 0;
  }
}

registerProcessor("voiceai-capture", CaptureProcessor);
