"""``python -m devnet.cli``: the ``devnet`` command."""

import sys

from devnet.cli import main

sys.exit(main())
