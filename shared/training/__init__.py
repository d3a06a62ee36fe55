"""Training jobs end to end (the domain is shared/domain/jobs.py, job_queue.py, job_policy.py, job_costs.py):

- submit.py: a request becomes a job (estimate, backend, quota check, approval gate);
- admission.py: the queue pass that admits jobs within quotas and budgets, one tenant at a time;
- launch.py: an admitted job is started on its backend, once;
- follow.py: the reconcile tick (state, cost so far, preemptions, stalls, the end) and cancel;
- progress.py: the run's own reports (``job-progress``);
- job_audit.py: the audit entry of each change to a job (every step above writes one);
- budget.py: the hard budget limits and what is left of them, for admission.
"""
