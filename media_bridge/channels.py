"""Configuration of the caller channels (``channels`` section): WebRTC, SIP, Twilio, LiveKit.

The WebSocket path needs none; each other channel is off until configured (SIP listens only when a
port is set, Twilio needs its auth token, LiveKit its server URL and API key).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class IceServer(BaseModel):
    """A STUN or TURN server (coturn in production), as RTCPeerConnection takes it."""

    urls: list[str] = Field(description="e.g. ['stun:stun.bank.internal:3478'] or ['turn:turn.bank.internal:3478'].")
    username: str | None = None
    credential: SecretStr | None = None


class WebRtcConfig(BaseModel):
    """Browser callers over WebRTC (aiortc is the bridge's peer)."""

    enabled: bool = Field(True, description="Offer WebRTC to the call page (the WebSocket stays the fallback).")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers for both the page and the bridge; empty: host "
        "candidates only (same network, or loopback in tests).")
    host_addresses: list[str] = Field(
        default_factory=list, description="Restrict the bridge's ICE host candidates to these addresses "
        "(empty: every interface). Tests use ['127.0.0.1'].")
    connect_timeout_s: float = Field(15.0, gt=0, description="From the answer to media flowing; else the call ends.")


class SipConfig(BaseModel):
    """Phone callers: the bridge is a SIP user agent facing a trunk or a proxy."""

    port: int | None = Field(None, ge=1, le=65535, description="UDP port to listen on; None: SIP off.")
    bind: str = Field("127.0.0.1", description="Address to listen on (the trunk-facing address in production).")
    public_address: str | None = Field(
        None, description="Address written into SDP and Contact when the bridge sits behind NAT (default: bind).")
    tcp: bool = Field(False, description="Also listen on TCP (same port).")
    rtp_port_min: int = Field(40000, ge=1024, le=65535, description="First RTP port.")
    rtp_port_max: int = Field(40999, ge=1024, le=65535, description="Last RTP port (two per call: RTP, RTCP).")
    codecs: list[str] = Field(["PCMU", "PCMA"], description="G.711 codecs offered/accepted, in preference order.")
    jitter_ms: int = Field(60, ge=0, le=500, description="Jitter buffer depth before caller audio is played "
                           "into the call.")
    tenant: str = Field("", description="Tenant (by name) whose bot answers calls without a route below "
                        "(empty: the anonymous calls tenant).")
    routes: dict[str, str] = Field(
        default_factory=dict, description="Called number (the Request-URI user part) to tenant name.")
    language: str = Field("en", description="Language of the greeting before the caller says anything.")
    max_calls: int = Field(200, ge=1, description="More concurrent calls than this are answered 486 Busy Here.")
    max_message_bytes: int = Field(8192, ge=1024, le=65507, description="Longer SIP messages are dropped.")
    user_agent: str = Field("voiceai", description="User-Agent / Server header.")


class TwilioConfig(BaseModel):
    """Twilio Media Streams (a cloud carrier): the TwiML webhook and the stream WebSocket."""

    auth_token: SecretStr | None = Field(None, description="The account's auth token: X-Twilio-Signature is "
                                         "checked with it; None: the Twilio routes answer 404.")
    public_url: str | None = Field(None, description="The gateway's URL as Twilio sees it (signatures are over "
                                   "it); default: the request's own URL.")
    tenant: str = Field("", description="Tenant (by name) whose bot answers (empty: the anonymous calls tenant).")
    language: str = Field("en", description="Greeting language.")


class LiveKitConfig(BaseModel):
    """LiveKit rooms: the bridge joins as the agent participant."""

    url: str | None = Field(None, description="The LiveKit server, e.g. wss://livekit.bank.internal; None: off.")
    api_key: str | None = Field(None, description="API key tokens are minted with.")
    api_secret: SecretStr | None = Field(None, description="Its secret.")
    agent_identity: str = Field("voiceai-agent", description="The bot's participant identity.")
    token_ttl_s: int = Field(3600, ge=60, description="Lifetime of minted room tokens.")
    sample_rate_hz: int = Field(48000, description="Rate of the bot's published track.")


class ChannelsConfig(BaseModel):
    """All caller channels besides the WebSocket."""

    webrtc: WebRtcConfig = WebRtcConfig()
    sip: SipConfig = SipConfig()
    twilio: TwilioConfig = TwilioConfig()
    livekit: LiveKitConfig = LiveKitConfig()
