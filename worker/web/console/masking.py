"""Contact data as the console shows it: enough to confirm with the patient, never the whole of it."""

from __future__ import annotations

import phonenumbers


def mask_phone(e164: str | None) -> str | None:
    """``+13125550142`` -> ``+1 ***-***-0142``: the country code and the last four digits only."""
    if not e164:
        return None
    try:
        number = phonenumbers.parse(e164, None)
        country, national = number.country_code, str(number.national_number)
    except phonenumbers.NumberParseException:
        country, national = None, "".join(ch for ch in e164 if ch.isdigit())
    last = national[-4:] if len(national) > 6 else ""
    prefix = f"+{country} " if country else ""
    return f"{prefix}***-***-{last}" if last else f"{prefix}***"


def mask_email(email: str | None) -> str | None:
    """``patient3@example.org`` -> ``p***@e***.org``: first letters and the top-level domain only."""
    if not email:
        return None
    local, _, domain = email.rpartition("@")
    name, dot, tld = domain.rpartition(".")
    if not local or not name:
        return "***"
    return f"{local[0]}***@{name[0]}***{dot}{tld}"
