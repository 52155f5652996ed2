"""Speech in: Silero VAD and streaming Whisper (faster-whisper), each servable over gRPC."""
