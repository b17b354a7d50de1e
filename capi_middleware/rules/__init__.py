"""Meta's rules as pure functions: normalization's neighbours, events, validation, cookies.

Layer 0 (DESIGN.md "Layout"): no I/O, no framework, no import from a higher layer. Each module
states one of META_CAPI_REFERENCE.md's rules; nothing here is public API except through
`capi_middleware.normalize`.
"""
