import sys

from deepshield.cli import main

sys.exit(main())
