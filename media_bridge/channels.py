"""Configuration of the caller channels (``channels`` section): WebRTC, SIP, Twilio, LiveKit.

The WebSocket path needs none; each other channel is off until configured (SIP listens only when a
port is set, Twilio needs its auth token, LiveKit its server URL and API key).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, model_validator


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
    gather_timeout_s: float = Field(10.0, gt=0, description="Longest the bridge gathers its ICE candidates "
                                    "(STUN/TURN) before it answers an offer; past it the offer gets 503.")
    turn_credentials_for_anonymous: bool = Field(
        False, description="Also give TURN usernames and credentials to callers of the anonymous calls tenant "
        "(the public page); otherwise only other callers get them and the public page uses STUN or falls back "
        "to the WebSocket.")


class SipConfig(BaseModel):
    """Phone callers: the bridge is a SIP user agent facing a trunk or a proxy."""

    port: int | None = Field(None, ge=0, le=65535,
                             description="UDP port to listen on (0: any free one); None: SIP off.")
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

    @model_validator(mode="after")
    def _advertised_address(self) -> SipConfig:
        # 0.0.0.0 in SDP means "hold" to a peer; a wildcard bind needs the address peers should use.
        if self.bind in ("0.0.0.0", "::") and not self.public_address:
            raise ValueError(f"channels.sip.bind is {self.bind}: set channels.sip.public_address to the address "
                             "trunks reach (it goes into SDP and Contact)")
        if self.rtp_port_min >= self.rtp_port_max:
            raise ValueError("channels.sip.rtp_port_min must be below rtp_port_max")
        return self


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
    connect_timeout_s: float = Field(10.0, gt=0, description="Per attempt to reach the server when joining a room.")
    caller_timeout_s: float = Field(30.0, gt=0, description="How long the agent waits in a room for the caller's "
                                    "audio before it leaves.")


class ChannelsConfig(BaseModel):
    """All caller channels besides the WebSocket."""

    webrtc: WebRtcConfig = WebRtcConfig()
    sip: SipConfig = SipConfig()
    twilio: TwilioConfig = TwilioConfig()
    livekit: LiveKitConfig = LiveKitConfig()
