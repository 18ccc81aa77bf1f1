import sys

from dlspec.cli import main

sys.exit(main())
