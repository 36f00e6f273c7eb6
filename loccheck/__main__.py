"""`python -m loccheck`: the command line (`loccheck.cli`)."""
import sys

from loccheck.cli import main

sys.exit(main())
