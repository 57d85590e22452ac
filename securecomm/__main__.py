"""`python -m securecomm` behaves exactly like the `securecomm` command."""

from __future__ import annotations

from securecomm.cli.main import main

if __name__ == "__main__":
    main()
