"""`python -m neve_tune`: the `neve-tune` command."""

import sys

from neve_tune.cli import main

sys.exit(main())
