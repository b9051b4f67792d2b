"""bloomchat: turn an open multilingual base model into a multilingual chat model, serve it, measure it.

Pipeline, one sub-package per stage:  data -> pack -> train -> infer (chat/serve) -> eval (+ arena).
"""

__version__ = "0.1.0"
