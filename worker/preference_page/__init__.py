"""The patient's preference page: what she receives, chosen from a signed link, with no login.

A capability below the web layer: :mod:`.links` mints and reads the link (the delivery path puts it in every email
footer and the SMS HELP answer), :mod:`.grid` says what the page shows and what she may change, :mod:`.forms` keeps a
save CSRF-safe, :mod:`.service` reads and saves through :mod:`worker.preferences` (consent ledger source
``preference_page``), :mod:`.text` holds the page's words in English and Spanish. The HTTP side is
:mod:`worker.web.preference_page`.
"""
