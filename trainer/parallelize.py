"""Parallelism applied beside the single-device model: :func:`parallelize` owns the order.

:func:`build_model` builds the model on the ``meta`` device, calls :func:`parallelize`, then
materialises the shards (``to_empty`` + ``WanModel.init_weights``) and loads ``init_from`` into
them (:func:`trainer.checkpoint.load_init_weights`), so no rank holds the whole model.
:func:`build_mesh` makes the ``dp × cp`` device mesh.

The model code (``model/dit.py``) knows nothing of this beyond two hooks: LoRA adapters are
injected by peft (:mod:`model.lora`), and Ulysses context parallelism
(:mod:`model.context_parallel`) wraps the one attention call, which takes ``q, k, v`` as
``[B, L, heads, head_dim]``, with its all-to-alls.
"""

from __future__ import annotations

import logging
import warnings
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from multishot.model.compile import apply_compile
from multishot.model.config import WanConfig
from multishot.model.dit import WanModel
from multishot.trainer.checkpoint import InitLoad, load_init_weights
from multishot.model.context_parallel import apply_context_parallel
from multishot.model.lora import apply_lora, init_adapters

if TYPE_CHECKING:
    from multishot.trainer.config import ModelConfig

log = logging.getLogger(__name__)

_aten = torch.ops.aten
#: ops whose outputs selective checkpointing keeps (torchtitan's ``_save_list``, all matmuls
#: kept): the Linear matmuls and every attention kernel the backends call (cuDNN, flash,
#: memory-efficient, CPU flash, varlen flash). Everything else in a block is element-wise
#: or a norm in float32 (modulation, LayerNorm, RMSNorm, RoPE, GELU, gated residuals): cheap
#: to recompute but as large as the matmul outputs, so it is recomputed.
SAVED_OPS = frozenset(op for op in (
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten.convolution.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._flash_attention_forward.default,
    _aten._efficient_attention_forward.default,
))


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the outputs of :data:`SAVED_OPS`, recompute the rest (``torch.utils.checkpoint``'s
    selective activation checkpointing)."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def build_model(model_config: WanConfig, config: ModelConfig, device: torch.device, *,
                seed: int, mixed_precision: bool, load_init: bool = True,
                context_group: dist.ProcessGroup | None = None,
                ) -> tuple[torch.nn.Module, InitLoad | None]:
    """The sharded ``WanModel`` of a run (collective: every rank of the default process group).

    Built on ``meta``; LoRA adapters injected if ``config.lora`` (:func:`model.lora.apply_lora`:
    model changes come before the parallelism); split over ``context_group`` (Ulysses,
    :func:`model.context_parallel.apply_context_parallel`; None or one rank: not split); wrapped by :func:`parallelize` (compile,
    activation checkpointing, FSDP2); materialised on ``device`` (``to_empty``) with Wan's
    initialisation (``WanModel.init_weights``, then the adapters' own: B = 0, so the model's
    output is the base's); then, if ``config.init_from`` and ``load_init``, the base weights are
    read from that checkpoint slice by slice (:func:`trainer.checkpoint.load_init_weights`): no
    rank holds the whole model or state dict.

    Args:
        model_config: the architecture (``model.config.get_config(config.name)``).
        config: the run's model section (backend, sparse attention, wrappers, ``init_from``).
        seed: seeds the initialisation.
        load_init: read ``config.init_from`` (False when a resume will overwrite the weights).
        mixed_precision: bf16 compute under FSDP2 (:func:`apply_fsdp`).
        context_group: the ranks that split each sample (the mesh's ``cp`` dimension).
    Returns:
        the model and what the checkpoint load read on this rank (None without a load).
    Raises:
        UsageError: ``init_from`` is missing or does not fit the architecture.
    """
    with torch.device("meta"):
        model = WanModel(model_config, config.attention_backend,
                         sparse_self_attention=config.sparse_self_attention,
                        global_bank=config.global_bank)
    if config.lora is not None:
        apply_lora(model, config.lora, base_dtype=torch.bfloat16 if mixed_precision else None)
    apply_context_parallel(model, context_group)
    parallelize(model, config, device, mixed_precision)
    # FSDP2's CPUOffloadPolicy keeps the sharded parameters in CPU memory: materialise them there
    model.to_empty(device="cpu" if config.cpu_offload else device)
    loading = bool(config.init_from and load_init)
    if device.type == "cuda" or loading:
        # CUDA: DTensor's offset-based RNG draws every shard as its part of one seeded full
        # tensor. With a checkpoint to load, the values drawn here are overwritten anyway
        # (LoRA's adapters aside), so CPU ranks draw their shards alone too.
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "DTensor random operators may not have complete support")
            _init_weights(model, config)
    else:
        _init_through_one_model(model, model_config, config, seed)
    loaded = None
    if loading:
        loaded = load_init_weights(model, config.init_from)
        log.info("initialised from %s: read %.1f of its %.1f MiB on this rank", config.init_from,
                 loaded.bytes_read / 2**20, loaded.checkpoint_bytes / 2**20)
    return model, loaded


def _init_weights(model: nn.Module, config: ModelConfig) -> None:
    """Wan's initialisation, then the adapters' own (B = 0: the output is the base's)."""
    model.init_weights()
    if config.lora is not None:
        init_adapters(model)


def _init_through_one_model(model: nn.Module, model_config: WanConfig, config: ModelConfig,
                            seed: int) -> None:
    """Initialise the sharded ``model`` on CPU as one unsharded model seeded with ``seed`` would
    be. DTensor has no RNG on CPU: each rank would draw its shards from its own generator, and
    the initial weights would depend on the number of ranks (a context-parallel run would not
    reproduce a single-process one). CPU runs are tests and demos, so every rank initialises
    the whole model once and keeps its shards (``set_model_state_dict`` of a full state dict).
    """
    with torch.device("meta"):
        full = WanModel(model_config, config.attention_backend,
                        sparse_self_attention=config.sparse_self_attention,
                        global_bank=config.global_bank)
    if config.lora is not None:
        apply_lora(full, config.lora)
    full.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        _init_weights(full, config)
    set_model_state_dict(model, full.state_dict(), options=StateDictOptions(full_state_dict=True))


def parallelize(model: nn.Module, config: ModelConfig, device: torch.device,
                mixed_precision: bool) -> None:
    """Wrap ``model`` (a ``WanModel``, on ``meta`` or materialised) in place, in this order:

    1. regional ``torch.compile`` of every block (:func:`apply_compile`), if ``config.compile``
       (None: on for CUDA, off for CPU) and the checkpoint policy is ``full``;
    2. activation checkpointing around every block but the last ``checkpoint_skip_last``
       (:func:`apply_activation_checkpointing`), if ``config.activation_checkpointing``;
    3. with ``checkpoint_policy: selective``, the compile of step 1 happens here instead, on the
       checkpointed blocks;
    4. FSDP2 on every block, then on the root (:func:`apply_fsdp`).

    Whole-block recompute compiles inside the checkpoint: our self-attention call is a
    deliberate graph break (an eager island, :func:`model.dit.self_attention_kernel`), and the
    recompute simply re-runs the compiled forward. A selective policy must see the individual
    ops, so then the checkpointed block is compiled (torchtitan's order). FSDP comes last so
    that its all-gather hooks wrap the whole (checkpointed) block.

    Args:
        mixed_precision: bf16 compute with fp32 gradient reduction (see :func:`apply_fsdp`).
    """
    compile_ = device.type == "cuda" if config.compile is None else config.compile
    # a selective policy must see the block's ops: compile the checkpointed block then
    # (torchtitan's order); whole-block recompute re-runs a block compiled inside the wrapper
    selective = config.activation_checkpointing and config.checkpoint_policy == "selective"
    if compile_ and not selective:
        apply_compile(model)
    if config.activation_checkpointing:
        apply_activation_checkpointing(model, config.checkpoint_skip_last, config.checkpoint_policy,
                                       preserve_rng_state=bool(config.lora and config.lora.dropout))
    if compile_ and selective:
        apply_compile(model)
    apply_fsdp(model, mixed_precision, cpu_offload=config.cpu_offload)


def build_mesh(device: torch.device, world_size: int, context: int) -> DeviceMesh:
    """The ``("dp", "cp")`` device mesh of all ranks: ``world_size / context`` data-parallel
    groups of ``context`` ranks that split one sample (``parallel.context``).

    ``cp`` is the inner dimension, as in torchtitan: the ranks of a sample are consecutive, so
    on ``torchrun`` nodes their all-to-alls stay on one host's NVLink.

    Raises:
        ValueError: ``context`` does not divide ``world_size``.
    """
    if context < 1 or world_size % context:
        raise ValueError(f"parallel.context {context} must divide the number of ranks "
                         f"{world_size}")
    return init_device_mesh(device.type, (world_size // context, context),
                            mesh_dim_names=("dp", "cp"))


def apply_activation_checkpointing(model: nn.Module, skip_last: int = 0, policy: str = "full",
                                   preserve_rng_state: bool = False) -> None:
    """Wrap blocks of ``model.blocks`` so their activations are recomputed in backward
    (non-reentrant ``torch.utils.checkpoint``; DiffSynth's per-block gradient checkpointing).

    Args:
        skip_last: the last ``skip_last`` blocks keep their activations (no recompute): each
            saves a third of its forward's work for its activations' memory.
        policy: ``"full"`` recomputes the whole block; ``"selective"`` keeps the outputs of
            :data:`SAVED_OPS` (matmuls, attention) and recomputes the element-wise and norm
            ops between them (``create_selective_checkpoint_contexts``, as torchtitan's op-level
            SAC). Selective needs eager blocks or blocks compiled *after* this wrapping
            (:func:`apply_compile` on the wrapped blocks): a policy cannot see into a graph
            compiled inside it.
        preserve_rng_state: replay the forward's RNG in the recompute (needed when the block
            draws random numbers: LoRA dropout).
    Raises:
        ValueError: unknown policy.
    """
    if policy not in ("full", "selective"):
        raise ValueError(f"unknown activation checkpointing policy {policy!r}")
    extra = {"context_fn": partial(create_selective_checkpoint_contexts, _selective_policy)} \
        if policy == "selective" else {}
    for i, block in enumerate(model.blocks):
        if i < len(model.blocks) - skip_last:
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=preserve_rng_state, **extra)


def apply_fsdp(model: nn.Module, mixed_precision: bool, cpu_offload: bool = False) -> None:
    """Shard ``model`` with FSDP2 over the default process group: one unit per block, then
    the root (embeddings, head).

    The group is all ``dp × cp`` ranks (torchtitan's ``dp_shard_cp``): the ranks splitting a
    sample hold different parameter shards too, and FSDP's gradient average over them is the
    reduction context parallelism needs (:mod:`model.context_parallel`).

    Args:
        mixed_precision: bf16 parameters for compute with fp32 gradient reduction (the sharded
            fp32 parameters stay the optimiser's master weights); False computes in fp32 (CPU /
            gloo runs).
        cpu_offload: keep the sharded parameters, their gradients and so the optimiser state
            in pinned CPU memory (``CPUOffloadPolicy``); each unit is copied to the GPU for its
            all-gather and the optimiser step runs on the CPU. Lets a 5B full fine-tune fit
            an 80 GB GPU, at the cost of host-device copies and a CPU AdamW step.
    """
    # cast_forward_inputs off: the model casts activations to its parameters' dtype itself and
    # keeps timesteps and the modulation in fp32 (Wan asserts it; bf16 timesteps near 1000
    # would round to steps of 4)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False) \
        if mixed_precision else MixedPrecisionPolicy(cast_forward_inputs=False)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mp_policy=policy, offload_policy=offload, reshard_after_forward=i < last)
    # the time embedding and projection are tiny and feed every block's modulation: fp32
    # parameters in forward, as Wan computes them (bf16 weights put 0.4% error into e0)
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in (model.time_embedding, model.time_projection):
        fully_shard(module, mp_policy=fp32, offload_policy=offload)
    fully_shard(model, mp_policy=policy, offload_policy=offload)
