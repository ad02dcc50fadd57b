"""Fine-tune and evaluate one configuration (or a sweep with -m).

    python train.py                                   # MiniLM + RoCoFT rows r=3 on Rotten Tomatoes (offline)
    python train.py model=tiny_encoder task=imdb method=rocoft_col rank=1 seed=2 train.lr=1e-3
    python train.py -m method=rocoft_row,rocoft_col rank=1,3     # a local sweep
    accelerate launch train.py ...                    # several GPUs / processes
"""

import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rocoft.errors import UserError
    from rocoft.training import run

    try:
        metrics = run(cfg)
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("validation", {}).get(metrics["main_metric"])  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
