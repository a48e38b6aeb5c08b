"""The costs of djcelery_ops against plain Celery, measured in one run.

    python -m bench --broker redis://127.0.0.1:6379/5 \\
        --database postgres://postgres@127.0.0.1:5432/djops_bench [--rounds 3] [--smoke]

Measures (one module each): ``runs`` (OpsTask + run recording / plain ``acks_late``),
``idempotency`` (atomic and lease mode / plain), ``deadletters`` (every task failing:
OpsTask keeping dead letters / plain Celery), ``replay`` (bulk replay / raw ``send_task``),
``beat`` (LockedDatabaseScheduler's dispatch and idle tick against django-celery-beat's
DatabaseScheduler). Rounds alternate the order (baseline first, then last). The table shows
each ratio's median and min-max over rounds and a CPU-per-task ratio; the JSON report
(``var/bench/<timestamp>.json``) keeps the machine, versions, commit and every round.
``--write-readme`` rewrites the README's Performance section from it.

``seed_runs.py`` is a separate script (5 million job runs, then admin and stats timings).
"""
