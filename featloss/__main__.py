"""`python -m featloss` is the same as `featloss`."""

import sys

from featloss.cli import main

sys.exit(main())
