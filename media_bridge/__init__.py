"""The per-call real-time loop: VAD, ASR, endpointing, LLM, TTS, paced playout and barge-in."""
