"""Shared test setup: make tests/ importable (the effdet reference shim lives here)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
