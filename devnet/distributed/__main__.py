"""``python -m devnet.distributed -n N [--hosts H] PROGRAM [ARGS...]`` (``launcher.main``)."""

import sys

from devnet.distributed.launcher import main

sys.exit(main())
