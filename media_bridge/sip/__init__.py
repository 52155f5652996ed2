"""Phone callers over SIP: the bridge is a SIP user agent (UDP) facing a trunk or a proxy.

- ``message``: parsing and writing SIP messages, with limits (RFC 3261 §7, §18, §20).
- ``sdp``: session descriptions and the G.711 offer/answer (RFC 4566, RFC 3264).
- ``ua``: ``SipServer``, the transactions and dialogs that turn INVITEs into calls on the ``CallHost``.
- ``transport``: ``SipCallTransport``, one call's ``CallTransport`` (audio to RTP, transfer by REFER).
- ``rtp``: the media (RTP/G.711, jitter buffer, RFC 4733 keys).
"""
