"""Training-step time and peak memory of RoCoFT against LoRA, full fine-tuning and the frozen floor.

    python scripts/bench_efficiency.py --shape roberta-base --device cpu
    python scripts/bench_efficiency.py --shape llama2-7b llama-1b --estimate-memory   # no GPU needed

Writes ``results/bench/efficiency_<shapes>_<device>.json`` and ``.md``. ``--help`` documents every option,
variant, default and memory measure, with more examples; the code lives in ``rocoft/bench/`` (this
command line: ``rocoft/bench/cli.py``).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # allow ``python scripts/bench_efficiency.py`` without installing
    sys.path.insert(0, str(ROOT))

from rocoft.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
