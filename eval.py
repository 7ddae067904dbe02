"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [data=cifar10 data.root=...]``. See README.

The same as ``autonorm-eval`` and ``python -m autonorm eval`` (``autonorm.__main__``).
"""

from autonorm.__main__ import eval_main

if __name__ == "__main__":
    eval_main()
