"""``python -m onnxrep``."""

import sys

from onnxrep.cli import main

sys.exit(main())
