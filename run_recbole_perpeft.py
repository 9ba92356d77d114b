"""Train and test a model with recbole_perpeft, like RecBole's run_recbole.py.

    python run_recbole_perpeft.py                      # PerPEFT + LoRA on ml-100k
    python run_recbole_perpeft.py --model=SASRec --dataset=ml-100k
    python run_recbole_perpeft.py --model=GlobalPEFT --config_files="a.yaml b.yaml" --epochs=5

Any ``--key=value`` that is not one of the options below overrides a config key,
as RecBole's own command line does.
"""

import argparse
import os

from recbole_perpeft.quick_start import run_recbole_perpeft
from recbole_perpeft.utils import PROPERTIES_DIR

DEFAULT_RUN = os.path.join(PROPERTIES_DIR, "quick_start_config", "default_run.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default=None, help="PerPEFT, GlobalPEFT, FrozenMM or a RecBole model")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    # RecBole's command line parses the remaining --key=value pairs into the config.
    args, _ = parser.parse_known_args()
    config_files = args.config_files.strip().split(" ") if args.config_files else []
    if args.model is None and args.dataset is None and not config_files:
        # The embedded default: a schedule sized for a 2-core CPU.
        config_files = [DEFAULT_RUN]
    run_recbole_perpeft(model=args.model, dataset=args.dataset, config_file_list=config_files)


if __name__ == "__main__":
    main()
