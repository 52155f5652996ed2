"""voiceai: self-hosted voice AI for Arabic and English customer care.

This package holds what every service shares: configuration, the model registry, the gRPC
serving scaffold, telemetry, audio helpers, the generated contracts (``voiceai.<svc>.v1``) and
the ``voiceai`` command. The services themselves live in the top-level packages ``asr``, ``nlu``,
``tts``, ``media_bridge``, ``gateway``, ``rag`` and ``workers``.
"""

__version__ = "0.1.0"
