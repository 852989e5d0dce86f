"""``python -m sdcompress`` (and ``accelerate launch -m sdcompress``) runs the CLI."""

import sys

from sdcompress.cli.main import main

sys.exit(main())
