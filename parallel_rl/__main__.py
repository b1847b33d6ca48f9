"""`python -m parallel_rl ...` is the `parallel-rl` command."""

import sys

from .cli import main

sys.exit(main())
