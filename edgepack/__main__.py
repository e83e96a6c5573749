"""``python -m edgepack`` is the ``edgepack`` command."""

import sys

from .cli import main

sys.exit(main())
