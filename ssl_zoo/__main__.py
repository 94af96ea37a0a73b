import sys

from ssl_zoo.cli import main

sys.exit(main())
