"""Running the proxy: worker processes, their supervisor, admin endpoint, metrics, logs.

supervisor (--workers N: start, restart, fan out signals, sum metrics) -> worker (one
process: event loop, listener, timers, signals, reload) ; admin serves what a worker's
runtime exposes; metrics and logs are written by everything.
"""
