"""One router per area under ``/v1`` (issue 6 item 6): auth, cardholders, cards, applications,
blacklist, exchange. Each route has a ``name`` that is its key in the role table."""
