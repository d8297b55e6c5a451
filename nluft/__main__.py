import sys

from nluft.cli import main

sys.exit(main())
