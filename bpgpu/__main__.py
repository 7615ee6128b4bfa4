from __future__ import annotations

import sys

from bpgpu.cli import main

sys.exit(main())
