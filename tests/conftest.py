"""Puts this folder on sys.path, so test modules can `from reference import ...`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
