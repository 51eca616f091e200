import sys

from bgbias.cli import main

sys.exit(main())
