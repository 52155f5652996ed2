/**
 * Streaming sample-rate conversion with a windowed-sinc low-pass, for the browser and the
 * AudioWorklet (this module is imported by both, so it must not touch the DOM).
 *
 * Why a real low-pass and not "keep every third sample": the microphone runs at the AudioContext
 * rate (usually 48 kHz). Decimating to 16 kHz without filtering folds everything between 8 and
 * 24 kHz (sibilants, fans, keyboard clicks) back into the 0-8 kHz speech band as aliasing, which the
 * VAD and the ASR then hear as noise. A two-tap average is not enough either: it is only 6 dB down
 * at 8 kHz. So each output sample is a Blackman-windowed sinc (cut-off 7 kHz, about 74 dB stop-band)
 * applied to the input around it. The same filter, run the other way, removes the spectral images
 * when the bot's 16 kHz voice is raised to the context rate for playback.
 *
 * Polyphase: with in/out rates reduced by their gcd to a/b, output n sits at input time n*a/b, whose
 * fractional part takes only b values, so b kernels are computed once (48k->16k: one kernel;
 * 16k->48k: three; 44.1k->16k: 160). State is carried across chunks, so chunk borders do not click.
 */

/** Kernel half-width, in samples of the lower of the two rates (24 samples = 1.5 ms at 16 kHz). */
const HALF_WIDTH_LOW_RATE_SAMPLES = 24;
/** Cut-off as a fraction of the lower rate's Nyquist frequency (7 kHz for 16 kHz audio). */
const CUTOFF_FRACTION = 0.875;
/** Above this many phases (odd rate pairs) the phase is rounded down to one of this many. */
const MAX_PHASES = 4096;

function gcd(x, y) {
  while (y) [x, y] = [y, x % y];
  return x;
}

function blackman(x) {
  // x in [-1, 1]; zero at both ends.
  return 0.42 + 0.5 * Math.cos(Math.PI * x) + 0.08 * Math.cos(2 * Math.PI * x);
}

function sinc(x) {
  if (Math.abs(x) < 1e-12) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

export class RateConverter {
  /**
   * @param {number} inRateHz rate of the samples given to process()
   * @param {number} outRateHz rate of the samples it returns
   */
  constructor(inRateHz, outRateHz) {
    if (!(inRateHz > 0 && outRateHz > 0)) throw new RangeError("sample rates must be positive");
    this.inRateHz = Math.round(inRateHz);
    this.outRateHz = Math.round(outRateHz);
    const g = gcd(this.inRateHz, this.outRateHz);
    this.step = this.inRateHz / g; // input samples advanced per output sample, times `den`
    this.den = this.outRateHz / g;
    this.phases = Math.min(this.den, MAX_PHASES);
    const ratio = this.inRateHz / Math.min(this.inRateHz, this.outRateHz);
    this.halfWidth = Math.ceil(HALF_WIDTH_LOW_RATE_SAMPLES * ratio); // in input samples
    this.taps = 2 * this.halfWidth;
    this.kernels = this._buildKernels();
    this.reset();
  }

  _buildKernels() {
    const W = this.halfWidth;
    const cutoffHz = (CUTOFF_FRACTION * Math.min(this.inRateHz, this.outRateHz)) / 2;
    const fc = cutoffHz / this.inRateHz; // cycles per input sample
    const kernels = new Float32Array(this.phases * this.taps);
    for (let p = 0; p < this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      const row = p * this.taps;
      for (let j = 0; j < this.taps; j++) {
        // Tap j multiplies input sample (base - W + 1 + j); d is the output's distance from it.
        const d = frac + W - 1 - j;
        const h = Math.abs(d) < W ? sinc(2 * fc * d) * blackman(d / W) : 0;
        kernels[row + j] = h;
        sum += h;
      }
      // Unity gain at DC for every phase, so a constant signal stays constant (no phase ripple).
      for (let j = 0; j < this.taps; j++) kernels[row + j] /= sum;
    }
    return kernels;
  }

  /** Forgets all history, as if just constructed (e.g. after barge-in drops the bot's audio). */
  reset() {
    // Samples before the first one are silence; W-1 of them are the filter's history.
    this.buf = new Float32Array(Math.max(4096, this.taps * 4));
    this.bufStart = -(this.halfWidth - 1); // absolute input index of buf[0]
    this.bufLen = this.halfWidth - 1;
    this.base = 0; // absolute input index at or before the next output's time
    this.num = 0; // fractional part of that time, in 1/den steps
    this.out = new Float32Array(256);
  }

  /**
   * Feeds input samples (any length) and returns the output samples they complete.
   * The returned array is reused by the next call: copy it if it must live longer.
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  process(input) {
    this._append(input);
    const W = this.halfWidth;
    const lastAvailable = this.bufStart + this.bufLen - 1;
    const maxOut = Math.ceil(((lastAvailable - W - this.base + 1) * this.den) / this.step) + 2;
    if (maxOut > this.out.length) this.out = new Float32Array(maxOut * 2);
    const { buf, kernels, taps, out } = this;
    let m = 0;
    while (this.base + W <= lastAvailable) {
      const phase = this.phases === this.den ? this.num : Math.floor((this.num * this.phases) / this.den);
      const row = phase * taps;
      const off = this.base - W + 1 - this.bufStart;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += buf[off + j] * kernels[row + j];
      out[m++] = acc;
      this.num += this.step;
      if (this.num >= this.den) {
        this.base += Math.floor(this.num / this.den);
        this.num %= this.den;
      }
    }
    this._discardBefore(this.base - W + 1);
    return out.subarray(0, m);
  }

  /** Pushes the samples still inside the filter out (the end of a stream), then starts afresh. */
  flush() {
    const tail = this.process(new Float32Array(this.halfWidth + 1)).slice();
    this.reset();
    return tail;
  }

  _append(input) {
    const need = this.bufLen + input.length;
    if (need > this.buf.length) {
      const bigger = new Float32Array(Math.max(need, this.buf.length * 2));
      bigger.set(this.buf.subarray(0, this.bufLen));
      this.buf = bigger;
    }
    this.buf.set(input, this.bufLen);
    this.bufLen = need;
  }

  _discardBefore(absoluteIndex) {
    const drop = absoluteIndex - this.bufStart;
    if (drop <= 0) return;
    this.buf.copyWithin(0, drop, this.bufLen);
    this.bufLen -= drop;
    this.bufStart += drop;
  }
}

/** Float samples in [-1, 1] to 16-bit little-endian PCM, written into `view` from byte 0. */
export function floatToPcm16(samples, view) {
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(2 * i, s < 0 ? Math.round(s * 32768) : Math.round(s * 32767), true);
  }
}

/** 16-bit little-endian PCM bytes to float samples in [-1, 1). */
export function pcm16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}
