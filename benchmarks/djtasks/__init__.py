"""The Django project of bench_django_tasks.py: one settings module for every backend
(chosen by ``$BENCH_TASKS_BACKEND``), the benchmark's ``@task`` functions, and the
driver that one run executes in a fresh process."""
