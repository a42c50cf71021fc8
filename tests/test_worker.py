"""The background-worker pattern the push worker, the mailer and the notifier share."""

import threading

from handlers.services.worker import Worker


def counting_worker(wait=None, fail_first=False, **options):
    ran = threading.Semaphore(0)
    calls = []

    def step():
        calls.append(threading.current_thread().name)
        ran.release()
        if fail_first and len(calls) == 1:
            raise RuntimeError("first step fails")
        return wait

    return Worker("oxc-test-worker", step, **options), ran, calls


def test_a_worker_starts_one_thread_however_often_it_is_started_and_steps_when_woken():
    worker, ran, calls = counting_worker()
    try:
        worker.start()
        worker.start()
        assert ran.acquire(timeout=5)
        worker.wake()
        assert ran.acquire(timeout=5)
        assert set(calls) == {"oxc-test-worker"}
        assert [thread.name for thread in threading.enumerate()].count("oxc-test-worker") == 1
    finally:
        worker.close()


def test_a_step_that_fails_is_logged_and_run_again(caplog):
    worker, ran, calls = counting_worker(fail_first=True, retry_after=0.01)
    try:
        worker.start()
        assert ran.acquire(timeout=5) and ran.acquire(timeout=5)
    finally:
        worker.close()
    assert "oxc-test-worker: a step failed" in caplog.text


def test_a_step_runs_again_when_its_wait_runs_out():
    worker, ran, _ = counting_worker(wait=0.01)
    try:
        worker.start()
        assert all(ran.acquire(timeout=5) for _ in range(3))
    finally:
        worker.close()


def test_close_stops_and_joins_and_a_closed_worker_never_starts():
    worker, ran, calls = counting_worker()
    worker.start()
    assert ran.acquire(timeout=5)
    worker.close()
    assert worker.stopping and "oxc-test-worker" not in [thread.name for thread in threading.enumerate()]
    worker.start()
    assert not ran.acquire(timeout=0.1) and len(calls) == 1
    never, _, never_calls = counting_worker()
    never.close()
    never.start()
    assert never_calls == []
