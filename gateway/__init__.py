"""The front door: FastAPI app with the call WebSocket, REST for calls, health, metrics and the web page."""
