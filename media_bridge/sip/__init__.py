"""Phone callers over SIP: the bridge is a SIP user agent (UDP) facing a trunk or a proxy.

- ``message``: parsing and writing SIP messages, with limits (RFC 3261 §7, §18, §20).
- ``sdp``: session descriptions and the G.711 offer/answer (RFC 4566, RFC 3264).
- ``ua``: ``SipServer``: the socket, transactions and dispatch that turn INVITEs into calls on the ``CallHost``.
- ``dialog``: one call's dialog: route set, CSeq, re-INVITE, BYE, INFO keys, REFER.
- ``transport``: ``SipCallTransport``, one call's ``CallTransport`` (audio to RTP, transfer by REFER).
- ``rtp``: RTP packets and ``RtpSession`` (G.711 both ways, symmetric latching, paced sending).
- ``jitter``: the receive side's jitter buffer, loss concealment and SSRC guard.
- ``dtmf``: RFC 4733 telephone-events.
"""
