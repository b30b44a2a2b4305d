"""PHI-free texts, per category, channel and locale.

Templates take no patient data at all: no name, condition, clinician, time or message content. A lock
screen, an SMS or an email may be read by someone else, so they only say *that* there is something and
send the patient to the app. Marketing variants carry the opt-out wording the law requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.categories import Category, Channel

BRAND = "Partum Health"
LOCALES = ("en", "es")


@dataclass(frozen=True)
class Rendered:
    title: str
    body: str


_TEXT: dict[tuple[Category, str], tuple[str, str]] = {
    (Category.CARE_TEAM_MESSAGE, "en"): ("New message", "You have a new message from your care team."),
    (Category.CARE_TEAM_MESSAGE, "es"): ("Nuevo mensaje", "Tiene un nuevo mensaje de su equipo de atención."),
    (Category.APPOINTMENT_REMINDER, "en"): (
        "Appointment reminder",
        "You have an upcoming appointment. Open the app for details.",
    ),
    (Category.APPOINTMENT_REMINDER, "es"): (
        "Recordatorio de cita",
        "Tiene una cita próxima. Abra la aplicación para ver los detalles.",
    ),
    (Category.SURVEY_REMINDER, "en"): ("Check-in", "A short check-in is waiting for you in the app."),
    (Category.SURVEY_REMINDER, "es"): (
        "Seguimiento",
        "Tiene un breve cuestionario esperándole en la aplicación.",
    ),
    (Category.ACCOUNT_NOTICE, "en"): (
        "Account notice",
        "There is an update about your account or our policies. Open the app or sign in to read it.",
    ),
    (Category.ACCOUNT_NOTICE, "es"): (
        "Aviso de cuenta",
        "Hay una novedad sobre su cuenta o nuestras políticas. Abra la aplicación para leerla.",
    ),
}

#: Other texts of a category, chosen by ``context['template']`` (key -> locale -> title, body); as PHI-free as the
#: rest. ``escalation``: the one follow-up of a care-team message still unread (:mod:`worker.care_team`).
VARIANTS: dict[tuple[Category, str], dict[str, tuple[str, str]]] = {
    (Category.CARE_TEAM_MESSAGE, "escalation"): {
        "en": ("Message waiting", "A message from your care team is still waiting for you in the app."),
        "es": ("Mensaje pendiente", "Un mensaje de su equipo de atención todavía le espera en la aplicación."),
    },
}

#: Campaign templates (key -> locale -> title, body). Reviewed copy, no patient data, chosen by key: a
#: campaign can never carry free text. ``news`` is the default.
MARKETING_TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "news": {
        "en": ("News from Partum Health", "New services and offers are available in the app."),
        "es": ("Novedades de Partum Health", "Hay nuevos servicios y ofertas disponibles en la aplicación."),
    },
    "new_service": {
        "en": ("Something new at Partum Health", "We have added a new service. See what is new in the app."),
        "es": ("Algo nuevo en Partum Health", "Agregamos un nuevo servicio. Vea las novedades en la aplicación."),
    },
    "class_invite": {
        "en": ("Join a free class", "New group classes are open for sign-up in the app."),
        "es": ("Únase a una clase gratuita", "Hay nuevas clases en grupo abiertas para inscripción en la aplicación."),
    },
    "app_update": {
        "en": ("New in the app", "The Partum Health app has new features. Update to try them."),
        "es": ("Novedades en la aplicación", "La aplicación de Partum Health tiene nuevas funciones. Actualícela."),
    },
}
DEFAULT_MARKETING_TEMPLATE = "news"

_SMS_STOP = {"en": "Reply STOP to opt out.", "es": "Responda STOP para cancelar."}
#: Ends an appointment reminder text when its type asks for confirmation by reply (``template = confirm_by_reply``).
_SMS_CONFIRM = {"en": "Reply C to confirm, R to reschedule.", "es": "Responda C para confirmar, R para reprogramar."}
CONFIRM_TEMPLATE = "confirm_by_reply"
_EMAIL_UNSUBSCRIBE = {"en": "Unsubscribe: {url}", "es": "Cancelar suscripción: {url}"}
#: Every email's footer: her own signed link to the preference page (worker/preference_page).
_EMAIL_PREFERENCES = {"en": "Choose which notices you get: {url}", "es": "Elija qué avisos recibe: {url}"}
#: The HELP answer with her preference link: GSM-7 only (no accents) so it stays one 160-character segment; if a
#: long public URL would not fit, the plain HELP answer (with the support address) is sent instead.
_SMS_HELP_WITH_LINK = {
    "en": "Msg&data rates may apply. Reply STOP to opt out. support@partumhealth.com Settings: {url}",
    "es": "Pueden aplicar tarifas. Responda STOP para salir. support@partumhealth.com Ajustes: {url}",
}
SMS_SEGMENT = 160


#: The one reply to an SMS keyword (TCPA: a confirmation, no marketing; HELP: who we are and how to stop; an unclear
#: reply: one clarifying question).
_SMS_REPLIES: dict[tuple[str, str], str] = {
    (
        "opt_out",
        "en",
    ): "You are unsubscribed from Partum Health texts and will receive no more. Reply START to resubscribe.",
    ("opt_out", "es"): "Ya no recibirá mensajes de texto de Partum Health. Responda START para volver a suscribirse.",
    ("opt_in", "en"): "You are subscribed to Partum Health texts again. Reply STOP to unsubscribe, HELP for help.",
    ("opt_in", "es"): "Vuelve a recibir mensajes de Partum Health. Responda STOP para cancelar, HELP para ayuda.",
    (
        "help",
        "en",
    ): "Partum Health care notices. Msg&data rates may apply. Reply STOP to unsubscribe. support@partumhealth.com",
    (
        "help",
        "es",
    ): "Avisos de Partum Health. Pueden aplicarse tarifas. Responda STOP para cancelar. support@partumhealth.com",
    # A reply that used a revocation word in another sense: ask once, record nothing until she answers.
    ("clarify", "en"): "Did you want to stop texts from us? Reply STOP to confirm. This number cannot answer "
    "questions: please use the app.",
    ("clarify", "es"): "¿Desea dejar de recibir nuestros mensajes? Responda STOP para confirmar. Este número no "
    "responde preguntas: use la aplicación.",
    # The answer to C / R (worker/confirm_by_reply.py): no time, place or kind of visit.
    ("appointment_confirmed", "en"): "Thank you, your appointment is confirmed. Open the app for details.",
    ("appointment_confirmed", "es"): "Gracias, su cita está confirmada. Abra la aplicación para ver los detalles.",
    ("appointment_reschedule", "en"): "Thank you, we have your request to reschedule. Open the app for next steps.",
    ("appointment_reschedule", "es"): "Gracias, recibimos su solicitud para reprogramar. Abra la aplicación para "
    "ver los pasos siguientes.",
}


def render(
    category: Category,
    channel: Channel,
    locale: str,
    *,
    unsubscribe_url: str | None = None,
    sms_reply: str | None = None,
    template: str | None = None,
    preference_url: str | None = None,
) -> Rendered:
    """Render the text for one message. Unknown locales fall back to English.

    ``template`` picks a campaign's marketing copy (:data:`MARKETING_TEMPLATES`) or another text of the category
    (:data:`VARIANTS`, e.g. the care-team follow-up); without one, a category has one text, except that an
    appointment reminder by SMS with ``template = confirm_by_reply`` asks for a C / R answer.
    ``preference_url`` (her signed preference-page link) goes in every email's footer and in the SMS HELP answer.
    """
    loc = locale if locale in LOCALES else "en"
    if sms_reply is not None:
        if sms_reply == "help" and preference_url:
            with_link = f"{BRAND}: {_SMS_HELP_WITH_LINK[loc].format(url=preference_url)}"
            if len(with_link) <= SMS_SEGMENT:
                return Rendered(title=BRAND, body=with_link)
        return Rendered(title=BRAND, body=f"{BRAND}: {_SMS_REPLIES[(sms_reply, loc)].removeprefix('Partum Health ')}")
    if category is Category.MARKETING:
        title, body = MARKETING_TEMPLATES[template or DEFAULT_MARKETING_TEMPLATE][loc]
    elif template is not None and (category, template) in VARIANTS:
        title, body = VARIANTS[(category, template)][loc]
    else:
        title, body = _TEXT[(category, loc)]
    if channel is Channel.SMS:
        # SMS must name the sender and stay within one 160-character segment.
        body = f"{BRAND}: {body}"
        if category is Category.MARKETING:
            body = f"{body} {_SMS_STOP[loc]}"
        elif category is Category.APPOINTMENT_REMINDER and template == CONFIRM_TEMPLATE:
            body = f"{body} {_SMS_CONFIRM[loc]}"
    elif channel is Channel.EMAIL and category is Category.MARKETING:
        if not unsubscribe_url:
            raise ValueError("a marketing email needs an unsubscribe URL")
        body = f"{body}\n\n{_EMAIL_UNSUBSCRIBE[loc].format(url=unsubscribe_url)}"
    if channel is Channel.EMAIL and preference_url:
        body = f"{body}\n\n{_EMAIL_PREFERENCES[loc].format(url=preference_url)}"
    return Rendered(title=title, body=body)
