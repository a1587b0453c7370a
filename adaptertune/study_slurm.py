"""A study on SLURM through submitit (the launcher DeiT, DINO and MAE ship): a job array of workers.

Each array task is a `StudyWorker`: it goes through the whole study with `sweep.run_sweep`, whose
run claim makes it skip runs another live worker holds, so W tasks share the runs between them. On
timeout or preemption submitit calls `StudyWorker.checkpoint`, which requeues the same worker; the
interrupted run resumes from its last epoch checkpoint (train.py). Logs land in `<out>/slurm/`.

submitit is optional (`pip install -e ".[cluster]"`); tests use its local executor (`cluster="local"`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError

INSTALL = 'submitting to SLURM needs submitit: pip install -e ".[cluster]"'
DEFAULTS = dict(time="4:00:00", max_parallel=64, gpus=1, cpus=10, mem_gb=64)


class StudyWorker:
    """Picklable callable of one array task: run the study's runs that no live worker holds."""

    def __init__(self, study_path: str, out: str, device: str = "auto"):
        self.study_path, self.out, self.device = study_path, out, device

    def __call__(self) -> int:
        from . import study

        return study.run(study.load(Path(self.study_path), out=Path(self.out)), device=self.device)

    def checkpoint(self):
        """submitit's hook on timeout / preemption: requeue this worker as it is. Nothing to save here:
        the trainer checkpoints every epoch, and the run's claim is released as the job exits."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StudyWorker(self.study_path, self.out, self.device))


def parse_time(text: str) -> int:
    """SLURM time `[D-]H:MM:SS`, `H:MM` or minutes -> whole minutes (submitit's timeout_min)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", str(text).strip())
    if m:
        d, h, mi, s = (int(x) if x else 0 for x in m.groups())
        minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    elif str(text).strip().isdigit():
        minutes = int(text)
    else:
        raise UserError(f"--time {text!r}: expected H:MM:SS, D-H:MM:SS or minutes")
    if minutes < 1:
        raise UserError(f"--time {text!r}: must be at least a minute")
    return minutes


def submit(study, *, partition: str | None = None, time: str | None = None, max_parallel: int | None = None,
           workers: int | None = None, gpus: int | None = None, cpus: int | None = None, mem_gb: int | None = None,
           cluster: str | None = None, log=print) -> list:
    """Submit a job array of workers for `study` (flags override the study's [slurm] table, which
    overrides DEFAULTS); returns the submitit jobs. `cluster="local"` runs them on this machine."""
    try:
        import submitit
    except ImportError:
        raise UserError(INSTALL) from None
    opts = {**DEFAULTS, **study.slurm}
    given = dict(partition=partition, time=time, max_parallel=max_parallel, workers=workers, gpus=gpus,
                 cpus=cpus, mem_gb=mem_gb)
    opts.update({k: v for k, v in given.items() if v is not None})
    unknown = sorted(set(opts) - set(DEFAULTS) - {"partition", "workers"})
    if unknown:
        raise UserError(f"{study.path} [slurm]: unknown key {unknown[0]!r}")
    if cluster in (None, "slurm") and not opts.get("partition"):
        raise UserError("--slurm needs --partition (or partition in the study's [slurm] table)")
    for key in ("max_parallel", "workers", "cpus", "mem_gb"):
        if opts.get(key) is not None and not (isinstance(opts[key], int) and opts[key] >= 1):
            raise UserError(f"--{key.replace('_', '-')} {opts[key]!r}: need a whole number >= 1")
    left = [c for c in study.configs if not _finished(study.run_dir(c))]
    if not left:
        log(f"study {study.name}: all {len(study.configs)} runs are finished; nothing to submit")
        return []
    n = min(opts.get("workers") or opts["max_parallel"], len(left))
    folder = study.out / "slurm"
    # A worker hits its time limit, requeues and goes on, as often as its share of the runs needs:
    # allow 3 per run it is expected to train before submitit gives up on a run that never progresses.
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=3 * -(-len(left) // n))
    executor.update_parameters(
        name=f"adaptertune-{study.name}", timeout_min=parse_time(opts["time"]), gpus_per_node=opts["gpus"],
        tasks_per_node=1, nodes=1, cpus_per_task=opts["cpus"], mem_gb=opts["mem_gb"],
        slurm_partition=opts.get("partition"), slurm_array_parallelism=opts["max_parallel"],
        slurm_signal_delay_s=120)
    worker = StudyWorker(str(study.path.absolute()), str(study.out), "cuda" if opts["gpus"] else "cpu")
    jobs = executor.submit_array([worker] * n)
    log(f"study {study.name}: {n} workers submitted for {len(left)} unfinished runs (job {jobs[0].job_id.split('_')[0]}); "
        f"logs in {folder}; follow with `adaptertune study status {study.path}`")
    return jobs


def _finished(run_dir: Path) -> bool:
    from .runs import is_finished

    return is_finished(run_dir)
