"""`python -m cnnsweep.confirm SWEEP_DIR --top N --seeds M`: the same as `cnnsweep confirm ...` (cnnsweep.command),
under the name confirmation was first given."""

import sys

from cnnsweep.command import main

if __name__ == "__main__":
    sys.exit(main(["confirm", *sys.argv[1:]]))
