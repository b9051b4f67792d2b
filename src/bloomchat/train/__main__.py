"""`python -m bloomchat.train RECIPE.yaml ...`: the `bloomchat train` verb as a module, so that
`accelerate launch -m bloomchat.train RECIPE.yaml` runs it on many processes."""

import sys

from bloomchat.train.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
