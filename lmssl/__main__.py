import sys

from lmssl.cli import main

sys.exit(main())
