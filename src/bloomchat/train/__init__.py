"""Two-stage fine-tuning from one recipe (BLOOMChat: OIG 1 epoch, then OASST1 + Dolly 3 epochs).

    bloomchat train recipes/demo.yaml --set workdir=/abs/demo [--resume] [--dry-run]

    from bloomchat.train import run_recipe, load_recipe
    result = run_recipe("recipes/demo.yaml", vars={"workdir": "/abs/demo"})
"""

from bloomchat.train.recipe import Recipe, Stage, load_recipe
from bloomchat.train.trainer import run_recipe

__all__ = ["Recipe", "Stage", "load_recipe", "run_recipe"]
