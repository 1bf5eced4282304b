"""The application file ``spark-submit`` runs: fulcrum's CLI (arguments after this file are its own).

It lives in a folder of its own because Python puts a script's folder first on ``sys.path``:
run from ``jobs/``, fulcrum's ``io`` module would shadow the standard library's.
"""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
