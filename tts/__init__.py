"""Speech out: XTTS v2 (GPU), Piper (CPU) and espeak-ng (Arabic here, last-resort fallback)."""
