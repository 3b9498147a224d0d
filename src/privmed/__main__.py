import sys

from privmed.cli import main

sys.exit(main())
