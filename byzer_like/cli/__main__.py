"""`python -m byzer_like.cli`: the same as the `byzer-like` command."""
import sys

from . import main

sys.exit(main())
