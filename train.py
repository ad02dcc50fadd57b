"""Fine-tune and evaluate one configuration (or a sweep with -m).

    python train.py                                   # MiniLM + RoCoFT rows r=3 on Rotten Tomatoes (offline)
    python train.py model=tiny_encoder task=imdb method=rocoft_col rank=1 seed=2 train.lr=1e-3
    python train.py -m method=rocoft_row,rocoft_col rank=1,3     # a local sweep
    python train.py -m +experiment=table1 hydra/launcher=slurm   # a paper table on a SLURM cluster
    accelerate launch train.py ...                    # several GPUs / processes
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rocoft.runs import execute

    return execute(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


USER_ERROR_EXIT = 2  # as rocoft.rundir.USER_ERROR_EXIT (not imported here: that would slow --help)


def composition_error(exit: SystemExit) -> bool:
    """Whether Hydra exited on a command line or config composition error (an unknown key or config name, a
    malformed override): Hydra prints its one-line message and calls ``sys.exit(1)`` while handling that
    exception, which therefore is the SystemExit's ``__context__``."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    return exit.code == 1 and isinstance(exit.__context__, (ConfigCompositionException, OverrideParseException))


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if composition_error(e):  # a user error: exit code 2, as for the suite's own (README, Reliability)
            sys.exit(USER_ERROR_EXIT)
        raise
