"""``python -m bpgpu.benchmark``: the same as ``bpgpu bench``."""

from __future__ import annotations

import sys

from bpgpu.benchmark import main

sys.exit(main())
