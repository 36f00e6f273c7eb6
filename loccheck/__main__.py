import sys

from loccheck.cli import main

sys.exit(main())
