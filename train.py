"""Train one run: ``python train.py norm=afn gate=gumbel`` (``-m`` for a sweep). See README.

The same as ``autonorm-train`` and ``python -m autonorm`` (``autonorm.__main__``).
"""

from autonorm.__main__ import train_main

if __name__ == "__main__":
    train_main()
