"""``python -m taichi_xray.cli ...`` = ``taichi-xray ...``."""
import sys

from . import main

sys.exit(main())
