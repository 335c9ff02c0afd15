"""``python -m pytest_modal_sandbox.emulator`` (see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
