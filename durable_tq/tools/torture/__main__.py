"""``python -m durable_tq.tools.torture producer|consumer ...``: a child of the torture test."""

import sys

from durable_tq.tools.torture.children import child_main

sys.exit(child_main())
