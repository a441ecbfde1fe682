"""``python -m fedsc.cli``."""

import sys

from fedsc.cli.app import main

sys.exit(main())
