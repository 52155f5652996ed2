"""What the bot says when it speaks from a script rather than from the LLM."""

from __future__ import annotations

_SCRIPT: dict[str, dict[str, str]] = {
    "greeting": {
        "en": "Hello, thank you for calling. How can I help you today?",
        "ar": "مرحبا، شكرا لاتصالك. كيف يمكنني مساعدتك اليوم؟",
    },
    "repeat": {
        "en": "Sorry, I didn't catch that. Could you say it again?",
        "ar": "عذرا، لم أسمعك جيدا. هل يمكنك الإعادة؟",
    },
    "llm_fallback": {
        "en": "Sorry, I'm having trouble answering right now. Would you like me to connect you to an agent?",
        "ar": "عذرا، أواجه مشكلة في الإجابة الآن. هل تريد أن أحولك إلى أحد الموظفين؟",
    },
    "still_there": {
        "en": "Are you still there?",
        "ar": "هل ما زلت معي؟",
    },
    "goodbye_silent": {
        "en": "I haven't heard anything, so I'll end the call now. Goodbye.",
        "ar": "لم أسمع شيئا، لذلك سأنهي المكالمة الآن. مع السلامة.",
    },
    "goodbye_max": {
        "en": "We have reached the time limit for this call. Thank you for calling, goodbye.",
        "ar": "لقد وصلنا إلى الحد الأقصى لمدة المكالمة. شكرا لاتصالك، مع السلامة.",
    },
    "transfer": {
        "en": "Please hold while I connect you to a colleague.",
        "ar": "يرجى الانتظار، سأحولك إلى أحد زملائي.",
    },
}


def scripted(key: str, language: str) -> str:
    """The scripted line in the caller's language (English when it has none)."""
    lines = _SCRIPT[key]
    return lines.get(language) or lines["en"]
