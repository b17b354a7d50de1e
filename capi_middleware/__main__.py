"""``python -m capi_middleware`` runs the ``capi-middleware`` command."""

from __future__ import annotations

from capi_middleware.cli.main import main

raise SystemExit(main())
