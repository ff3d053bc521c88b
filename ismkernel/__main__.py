import sys

from ismkernel.cli import main

sys.exit(main())
