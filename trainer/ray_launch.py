"""``multishot train --launcher ray``: the same fine-tuning run through Ray Train's ``TorchTrainer``.

Each Ray Train worker is one rank. Ray Train makes the process group (gloo on CPU workers,
NCCL on GPU workers), sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` and the worker's
current GPU; then the worker runs exactly what ``torchrun -m multishot.trainer`` runs —
``Trainer(config).train()`` — so the config, the DCP checkpoints in ``run.output_dir``, the
``metrics.jsonl`` / TensorBoard logs and the safetensors export are the same. The logged
metrics (loss, grad norm, lr, MFU, ...) also go to ``ray.train.report`` on every logging
step, so they show in the Ray dashboard and in the returned ``Result``.

Checkpoints stay in ``run.output_dir`` (not Ray's storage): on several nodes it must be a
shared file system, as for torchrun. A worker failure restarts the group (``max_failures``),
which resumes from the newest complete checkpoint there. Following the Ray Train PyTorch
guide (docs.ray.io/en/latest/train/getting-started-pytorch.html).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multishot.errors import UsageError
from multishot.trainer.config import TrainConfig

if TYPE_CHECKING:
    from ray.train import Result

    from multishot.trainer.trainer import ValidationFactory

log = logging.getLogger(__name__)


def _train_worker(loop_config: dict[str, Any]) -> dict[str, float]:
    """One rank, inside a Ray Train worker: ``Trainer(config).train()`` reporting to Ray.
    Returns the last metrics it reported (``step`` included)."""
    import ray.train

    from multishot.trainer.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ray Train moves workers into its own run folder; relative paths in the config mean
    # the launcher's working directory, as they do for torchrun's ranks
    if os.path.isdir(loop_config["cwd"]):
        os.chdir(loop_config["cwd"])

    last: dict[str, float] = {}

    def report(step: int, metrics: dict[str, float]) -> None:
        if metrics:  # logging steps are the same on every rank, and report is a barrier
            last.update(step=step, **metrics)
            ray.train.report(dict(last))

    Trainer(loop_config["config"], validation=loop_config["validation"]).train(on_step=report)
    return last


def launch(config: TrainConfig, num_workers: int | None = None, *, use_gpu: bool | None = None,
           address: str | None = None, max_failures: int = 0,
           validation: ValidationFactory | None = None) -> Result:
    """Run ``config`` on ``num_workers`` Ray Train workers (one rank each) and wait for it.

    Args:
        config: the validated run (``load_config(path, TrainConfig)``), shipped to every worker.
        num_workers: ranks; default the GPUs of the Ray cluster, or 1 without GPUs.
        use_gpu: one GPU per worker (NCCL) or CPU workers (gloo); default: whether the Ray
            cluster has GPUs.
        address: Ray cluster to join (``ray.init(address=...)``, e.g. ``auto`` or
            ``ray://head:10001``) when Ray is not initialised yet; default starts a local Ray
            (and shuts it down after). An already-initialised Ray is used as it is.
        max_failures: restarts of the worker group after a worker dies; each restart resumes
            from the newest checkpoint in ``run.output_dir`` (needs ``run.resume``).
        validation: the trainer's validation hook factory
            (:data:`trainer.trainer.ValidationFactory`), shipped to every worker.

    Returns:
        Ray Train's ``Result``. Its ``return_value`` (Ray Train v2) holds rank 0's last
        reported metrics (``step``, ``loss``, ``grad_norm``, ``lr``, ``mfu``, ...); its
        ``metrics`` / ``checkpoint`` stay empty, as no checkpoint is handed to Ray.

    Raises:
        UsageError: a worker stopped on a bad input (e.g. ``init_from`` does not fit), or the
            cluster at ``address`` does not answer (:func:`multishot.ray_address.check_reachable`).
        ray.train.TrainingFailedError: a worker failed more than ``max_failures`` times.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    from multishot.ray_connect import init_ray

    # the job's cluster (address / RAY_ADDRESS, checked to answer), else a private local Ray on 127.0.0.1
    owns_ray = init_ray(address, include_dashboard=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 if use_gpu is None else use_gpu
        num_workers = num_workers or (gpus if use_gpu and gpus else 1)
        output_dir = Path(config.run.output_dir).absolute()
        log.info("Ray Train: %d workers (%s), checkpoints in %s", num_workers,
                 "GPU, nccl" if use_gpu else "CPU, gloo", output_dir)
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"config": config, "cwd": os.getcwd(), "validation": validation},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            # Ray keeps only its run state here; the checkpoints are the trainer's own DCP ones
            run_config=RunConfig(name="ray_train", storage_path=str(output_dir),
                                 failure_config=FailureConfig(max_failures=max_failures)))
        try:
            return trainer.fit()
        except WorkerGroupError as err:
            # a worker's bad input ends the launch as torchrun's does: one line, exit 2
            causes = [getattr(e, "cause", e) for e in err.worker_failures.values()]
            usage = [c for c in causes if isinstance(c, UsageError)]
            if usage:
                raise UsageError(str(usage[0])) from None
            raise
    finally:
        if owns_ray:
            ray.shutdown()
