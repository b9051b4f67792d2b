"""`bloomchat demo`: the whole BLOOMChat pipeline on a laptop, through the same code as real runs."""

from bloomchat.demo.run import run_demo

__all__ = ["run_demo"]
