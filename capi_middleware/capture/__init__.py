"""A request's capture: reading headers, consent, the cookie plan, and the RequestContext.

Layer 2: built on the rules, consent and the client; the adapters (asgi, wsgi, django) call it.
"""
