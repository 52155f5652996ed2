/** The page's words in English and Arabic. The UI language is the call language the caller picks. */

export const STRINGS = {
  en: {
    title: "Customer care assistant",
    subtitle: "Talk to the assistant from your browser.",
    language: "Language",
    call: "Call",
    hangup: "Hang up",
    conversation: "Conversation",
    empty: "Press Call and start speaking. Your words and the assistant's replies appear here.",
    you: "You",
    bot: "Assistant",
    interrupted: "interrupted",
    unheard: "not played: the caller interrupted",
    latency: "response time",
    ms: "ms",
    mic_level: "Microphone level",
    transport: "How the call's audio travels",
    states: {
      idle: "Ready",
      connecting: "Connecting…",
      listening: "Listening",
      user_speaking: "You are speaking",
      thinking: "Thinking…",
      bot_speaking: "Assistant speaking",
      interrupted: "Interrupted",
      ended: "Call ended",
    },
    ended: {
      hangup: "You hung up.",
      caller_silent: "The call ended because no speech was heard.",
      max_duration: "The call reached its time limit.",
      error: "The call ended because of a server error.",
      server_shutdown: "The server is shutting down; please call again in a moment.",
    },
    errors: {
      mic_denied:
        "Microphone access was refused. Click the microphone or lock icon in the address bar, " +
        "allow the microphone for this site, then press Call again.",
      mic_missing: "No microphone was found. Connect one (or check your system sound settings), then press Call again.",
      mic_busy: "The microphone could not be opened; another application may be using it. Close it and press Call again.",
      insecure:
        "The browser only allows the microphone on secure pages. Open this page over https, " +
        "or as http://localhost on the server itself.",
      unsupported: "This browser cannot run the call audio (AudioWorklet missing). Use a current Chrome, Edge, Firefox or Safari.",
      audio_failed: "The browser's audio could not start:",
      ws_unreachable: "Could not reach the call server. Check that the gateway is running, then press Call again.",
      connection_failed: "Could not start the call:",
      ws_lost: "The connection to the call server was lost",
      ws_refused: "The server refused the call:",
      server_notice: "Server notice",
      dismiss: "Dismiss",
    },
  },
  ar: {
    title: "مساعد خدمة العملاء",
    subtitle: "تحدّث مع المساعد من متصفحك.",
    language: "اللغة",
    call: "اتصال",
    hangup: "إنهاء المكالمة",
    conversation: "المحادثة",
    empty: "اضغط «اتصال» وابدأ الكلام. سيظهر كلامك وردود المساعد هنا.",
    you: "أنت",
    bot: "المساعد",
    interrupted: "تمت المقاطعة",
    unheard: "لم يُشغَّل: قاطع المتصل المساعد",
    latency: "زمن الاستجابة",
    ms: "ملي ثانية",
    mic_level: "مستوى الميكروفون",
    transport: "طريقة نقل صوت المكالمة",
    states: {
      idle: "جاهز",
      connecting: "جارٍ الاتصال…",
      listening: "أستمع إليك",
      user_speaking: "أنت تتحدث",
      thinking: "أفكّر…",
      bot_speaking: "المساعد يتحدث",
      interrupted: "تمت المقاطعة",
      ended: "انتهت المكالمة",
    },
    ended: {
      hangup: "أنهيت المكالمة.",
      caller_silent: "انتهت المكالمة لأنه لم يُسمع أي كلام.",
      max_duration: "بلغت المكالمة الحد الأقصى لمدتها.",
      error: "انتهت المكالمة بسبب خطأ في الخادم.",
      server_shutdown: "الخادم يتوقف الآن؛ يرجى الاتصال مرة أخرى بعد قليل.",
    },
    errors: {
      mic_denied:
        "تم رفض الوصول إلى الميكروفون. اضغط على رمز الميكروفون أو القفل في شريط العنوان، " +
        "واسمح باستخدام الميكروفون لهذا الموقع، ثم اضغط «اتصال» مرة أخرى.",
      mic_missing: "لم يتم العثور على ميكروفون. وصّل ميكروفونًا (أو راجع إعدادات الصوت في جهازك)، ثم اضغط «اتصال» مرة أخرى.",
      mic_busy: "تعذّر فتح الميكروفون؛ ربما يستخدمه تطبيق آخر. أغلقه ثم اضغط «اتصال» مرة أخرى.",
      insecure:
        "لا يسمح المتصفح باستخدام الميكروفون إلا في الصفحات الآمنة. افتح هذه الصفحة عبر https، " +
        "أو عبر http://localhost على الخادم نفسه.",
      unsupported: "لا يستطيع هذا المتصفح تشغيل صوت المكالمة (AudioWorklet غير متوفر). استخدم إصدارًا حديثًا من Chrome أو Edge أو Firefox أو Safari.",
      audio_failed: "تعذّر تشغيل الصوت في المتصفح:",
      ws_unreachable: "تعذّر الوصول إلى خادم المكالمات. تأكد من أن البوابة تعمل، ثم اضغط «اتصال» مرة أخرى.",
      connection_failed: "تعذّر بدء المكالمة:",
      ws_lost: "انقطع الاتصال بخادم المكالمات",
      ws_refused: "رفض الخادم المكالمة:",
      server_notice: "تنبيه من الخادم",
      dismiss: "إغلاق",
    },
  },
};

/** Arabic script (letters, presentation forms): such text gets lang="ar" so it shapes and reads right. */
const ARABIC_SCRIPT = /[\u0600-\u06FF\u0750-\u077F\u08A0-\u08FF\uFB50-\uFDFF\uFE70-\uFEFF]/;

export function hasArabic(text) {
  return ARABIC_SCRIPT.test(text);
}
