"""The engine: scheduler, attempts, retries, executors and run recording."""
