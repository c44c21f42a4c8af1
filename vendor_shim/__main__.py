"""`python -m vendor_shim ...` (see vendor_shim.cli)."""

import sys

from vendor_shim.cli import main

sys.exit(main())
