"""The accelerate set-up of a run: which devices, how many processes, which parallelism.

accelerate 1.16 chooses FSDP only for the multi-device types (MULTI_GPU, MULTI_XPU, ...): a run
launched with `distributed_type: FSDP` whose processes join over gloo on the CPU becomes plain
MULTI_CPU data parallelism, with every parameter whole on every rank. `fsdp_on_cpu` switches such
a run to FSDP with the plugin accelerate builds from the launcher's FSDP_* variables, so that
recipes/accelerate/fsdp_cpu_2proc.yaml runs the same sharded code (DTensor parameters, sharded
checkpoints, gathered export) as recipes/accelerate/fsdp.yaml on GPUs. It acts only when the
launcher asked for FSDP (ACCELERATE_USE_FSDP=true) and the processes are on the CPU.
"""

from __future__ import annotations

import os

import torch

from bloomchat.errors import BloomchatError
from bloomchat.train.recipe import Recipe, world_size_from_env

_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def has_gpu() -> bool:
    """A device accelerate can distribute over (CUDA, XPU, ...); Apple's MPS cannot."""
    acc = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return acc is not None and acc.type != "mps"


def make_accelerator(recipe: Recipe):
    """The Accelerator of a run (one per process; a second recipe in the process starts afresh)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if recipe.precision == "fp16" and not torch.cuda.is_available():
        raise BloomchatError("precision fp16 needs a GPU; use bf16 or fp32 on CPU", where=f"{recipe.path} precision")
    # Several processes (accelerate launch / torchrun set WORLD_SIZE) but no GPU: join them over
    # gloo on the CPU. Without cpu=True accelerate finds no device to distribute over and every
    # process would train alone, all writing the same output folder.
    cpu = world_size_from_env() > 1 and not has_gpu()
    try:
        accelerator = Accelerator(mixed_precision=_MIXED[recipe.precision], cpu=cpu)
    except ValueError:
        # a second recipe in the same process with another precision: start the state afresh
        AcceleratorState._reset_state(reset_partial_state=False)
        accelerator = Accelerator(mixed_precision=_MIXED[recipe.precision], cpu=cpu)
    fsdp_on_cpu(accelerator)
    return accelerator


def fsdp_on_cpu(accelerator) -> bool:
    """Turn a MULTI_CPU run that the launcher started for FSDP into an FSDP run (see the module
    docstring); True when it did. The plugin is the one accelerate itself reads from FSDP_*."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP",
                                                                              "false").lower() != "true":
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise BloomchatError("FSDP on CPU processes needs fsdp_version: 2 (FSDP1 wants a GPU per process)",
                             where="accelerate config fsdp_config.fsdp_version")
    if plugin.cpu_ram_efficient_loading:
        raise BloomchatError("fsdp_cpu_ram_efficient_loading: true needs GPUs; set it to false for CPU processes",
                             where="accelerate config fsdp_config.fsdp_cpu_ram_efficient_loading")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP  # AcceleratorState and PartialState share one dict each
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True
