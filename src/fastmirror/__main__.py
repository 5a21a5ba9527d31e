"""`python -m fastmirror`: the same as the `fastmirror` console script."""

import sys

from fastmirror.cli import main

if __name__ == "__main__":
    sys.exit(main())
