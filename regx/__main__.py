import sys

from regx.cli import main

sys.exit(main())
