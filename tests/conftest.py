import sys
from pathlib import Path

# tests/stack.py and tests/llm_stub.py are helpers shared by the tests and the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent))
