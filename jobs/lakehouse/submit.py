"""The application file ``spark-submit`` runs: fulcrum's CLI (arguments after this file are its own).

``spark-submit`` runs it as a script, so Python puts this folder first on ``sys.path``: no module
here may share a name with a standard-library or dependency module (hence ``tables``, not ``io`` or ``delta``).
"""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
