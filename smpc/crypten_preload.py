"""Imported by the parties' fork server: loads CrypTen (with the fixes) once, before forking.

``smpc.crypten_compat`` alone defines :func:`~smpc.crypten_compat.import_crypten` without
calling it, so preloading it left every party (and the dealer) importing CrypTen itself
after the fork: ~0.6 s each, four at once on the coordinator's cores. Importing this module
in the fork server makes each party a fork with CrypTen already loaded.
"""

from __future__ import annotations

from smpc.crypten_compat import import_crypten

import_crypten()
