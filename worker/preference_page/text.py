"""The page's words, English and Spanish: short sentences, everyday words (a 6th-grade reading level, checked by
``tests/test_preference_page.py``), and nothing about her health or her contact details."""

from __future__ import annotations

from worker.categories import Category, Channel

LANGUAGES = ("en", "es")
#: What the language switch says, in the language it switches to.
LANGUAGE_NAMES = {"en": "English", "es": "Español"}

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your notices",
        "heading": "Choose what we send you",
        "intro": "Pick how we reach you. Tap a box to turn it on or off. Then tap Save.",
        "app_means": "App means an alert on your phone from our app.",
        "save": "Save my choices",
        "saved": "Saved. We will follow your new choices from now on.",
        "nothing_changed": "Nothing changed. Your choices were already set this way.",
        "form_expired": "This page was open a long time. Please look at your choices again, then tap Save. "
        "Nothing was changed yet.",
        "always_on_title": "Account notices",
        "always_on": "These are always on. We must tell you about your account and our rules.",
        "sms_stopped": "You asked us to stop texts, so we send you none. To get texts again, reply START to our text.",
        "sms_offers_locked": "To get offers by text, sign up in the app.",
        "help": "Questions? Email",
        "language": "Language",
        "invalid_title": "This link does not work",
        "invalid_body": "The link may be cut off or changed. Nothing was changed. "
        "To get a new link, text HELP to us, or open the app.",
        "expired_title": "This link is too old",
        "expired_body": "Links work for a short time to keep you safe. Nothing was changed. "
        "To get a new link, text HELP to us, or open the app.",
        "gone_body": "We have no notices to manage for this link. Nothing was changed.",
        "refused_title": "We could not save that",
        "refused_body": "Nothing was changed. Please open your link again and try once more.",
        "unavailable_title": "Please try again later",
        "unavailable_body": "This page is not working right now. Nothing was changed.",
    },
    "es": {
        "title": "Sus avisos",
        "heading": "Elija qué le enviamos",
        "intro": "Elija cómo le avisamos. Toque una casilla para prenderla o apagarla. Luego toque Guardar.",
        "app_means": "App es un aviso en su teléfono de nuestra app.",
        "save": "Guardar",
        "saved": "Listo. Desde ahora seguimos lo que eligió.",
        "nothing_changed": "No hubo cambios. Ya tenía todo así.",
        "form_expired": "Esta página estuvo abierta mucho rato. Mire de nuevo lo que eligió y toque Guardar. "
        "Aún no cambió nada.",
        "always_on_title": "Avisos de su cuenta",
        "always_on": "Estos siempre están prendidos. Le tenemos que avisar de su cuenta y de las reglas.",
        "sms_stopped": "Usted pidió no recibir textos, así que no le mandamos ninguno. Para recibirlos otra vez, "
        "responda START a un texto nuestro.",
        "sms_offers_locked": "Para recibir ofertas por texto, regístrese en la app.",
        "help": "¿Preguntas? Escriba a",
        "language": "Idioma",
        "invalid_title": "Este enlace no sirve",
        "invalid_body": "El enlace puede estar cortado o cambiado. No cambió nada. "
        "Para recibir otro, mándenos HELP por texto o abra la app.",
        "expired_title": "Este enlace ya venció",
        "expired_body": "Los enlaces duran poco por su seguridad. No cambió nada. "
        "Para recibir otro, mándenos HELP por texto o abra la app.",
        "gone_body": "No hay avisos que cambiar con este enlace. No cambió nada.",
        "refused_title": "No pudimos guardar",
        "refused_body": "No cambió nada. Abra su enlace otra vez y pruebe de nuevo.",
        "unavailable_title": "Pruebe más tarde",
        "unavailable_body": "Esta página no funciona ahora. No cambió nada.",
    },
}

#: (title, one line saying what it is) per category the page lets her change.
_CATEGORIES: dict[str, dict[Category, tuple[str, str]]] = {
    "en": {
        Category.CARE_TEAM_MESSAGE: ("Care team messages", "We tell you when your care team writes to you."),
        Category.APPOINTMENT_REMINDER: ("Visit reminders", "We remind you before a visit."),
        Category.SURVEY_REMINDER: ("Check-ins", "We tell you when a short check-in is ready."),
        Category.MARKETING: ("News and offers", "New classes, services and deals."),
    },
    "es": {
        Category.CARE_TEAM_MESSAGE: ("Mensajes de su equipo", "Le avisamos cuando su equipo le escribe."),
        Category.APPOINTMENT_REMINDER: ("Recordatorios de citas", "Le avisamos antes de una cita."),
        Category.SURVEY_REMINDER: ("Preguntas de control", "Le avisamos cuando hay unas preguntas cortas."),
        Category.MARKETING: ("Novedades y ofertas", "Clases, servicios y ofertas nuevas."),
    },
}

_CHANNELS: dict[str, dict[Channel, str]] = {
    "en": {Channel.PUSH: "App", Channel.SMS: "Text", Channel.EMAIL: "Email"},
    "es": {Channel.PUSH: "App", Channel.SMS: "Texto", Channel.EMAIL: "Correo"},
}


def language(requested: str | None, *fallbacks: str | None) -> str:
    """The first of ``requested`` and ``fallbacks`` that the page speaks (``es-MX`` -> ``es``); else English."""
    for candidate in (requested, *fallbacks):
        primary = (candidate or "").strip().lower().replace("_", "-").split("-")[0]
        if primary in LANGUAGES:
            return primary
    return "en"


def from_accept_language(header: str | None) -> str | None:
    """The preferred language of an ``Accept-Language`` header that the page speaks, if any (highest q first)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, index, primary))
    return min(ranked)[2] if ranked else None


def words(lang: str) -> dict[str, str]:
    return _WORDS[lang]


def category_text(lang: str, category: Category) -> tuple[str, str]:
    return _CATEGORIES[lang][category]


def channel_name(lang: str, channel: Channel) -> str:
    return _CHANNELS[lang][channel]


def every_sentence(lang: str) -> list[str]:
    """All the page's words in one language (for the reading-level check)."""
    out = list(_WORDS[lang].values())
    out += [f"{title}. {line}" for title, line in _CATEGORIES[lang].values()]
    return out
