import sys

from trp_ext.cli import main

sys.exit(main())
