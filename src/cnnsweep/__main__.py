"""`python -m cnnsweep TOOL [ARGS...]`: the `cnnsweep` command without installing it (cnnsweep.command)."""

import sys

from cnnsweep.command import main

if __name__ == "__main__":
    sys.exit(main())
