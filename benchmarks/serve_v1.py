"""`securecomm serve` with version 1 still served (ServerConfig.serve_version_1), for a version-1 baseline.

Version 1 is off in the product and has no command-line option (securecomm/server/versions.py); a
benchmark that compares version 2 with version 1 in one run starts its server through this instead.
Run: python benchmarks/serve_v1.py --home DIR serve [serve options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securecomm.server import config as C

_validate = C.ServerConfig.validate


def _serving_version_1(self: C.ServerConfig) -> None:
    self.serve_version_1 = True  # set on the config object, as the field's comment says
    _validate(self)


C.ServerConfig.validate = _serving_version_1  # type: ignore[method-assign]

if __name__ == "__main__":
    from securecomm.cli.main import main

    main()
