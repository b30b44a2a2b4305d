"""The preference page over HTTP: ``GET /p/<token>`` shows it, ``POST /p/<token>`` saves it (see :mod:`.routes`).

Server-rendered Jinja2 templates and one self-served stylesheet (package data here); no script, cookie, CDN or
third-party asset, so the only origin the page ever talks to is ours.
"""
