"""Slurm: submit batch jobs and follow them to the end.

Small on purpose: ``sbatch --parsable`` to submit, ``scontrol show job -o`` to
follow (works without slurmdbd).  ``run`` lets a caller run the Slurm commands
as another user (tests submit as an ordinary user)::

    job = submit(Path("job.sh"), cwd=Path("."))
    result = wait(job, timeout=300)      # JobResult(state="COMPLETED", exit_code=0, ...)
"""

from hpcstack.scheduler.slurm import JobResult, Runner, cancel, job_info, submit, wait

__all__ = ["JobResult", "Runner", "cancel", "job_info", "submit", "wait"]
