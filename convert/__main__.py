"""`python -m convert SRC_DIR -o OUT.gguf --outtype q4_k_m`: the converter as a standalone script."""

import sys

from convert.cli import main

sys.exit(main())
