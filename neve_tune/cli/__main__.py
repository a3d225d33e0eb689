"""``python -m neve_tune.cli``."""

import sys

from neve_tune.cli import main

sys.exit(main())
