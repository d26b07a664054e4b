"""The web dashboard every worker serves at ``GET /dashboard``: read-only, same port as the API.

This package holds the page's static files (``index.html``, ``dashboard.css`` and vanilla
JavaScript modules: no build step, nothing fetched from elsewhere), the views that serve them
and the JSON the page needs beyond the task API (:mod:`streams.dashboard.views`), and the
bounded reads of Kafka behind the task timeline and the latest dead letters
(:mod:`streams.dashboard.reads`).
"""
