"""`python -m bertjax ...` is the `bertjax` command."""

import sys

from bertjax.cli import main

sys.exit(main())
