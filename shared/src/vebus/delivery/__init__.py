"""Route consumers: the delivery policy (attempts, backoff, max_age, rate, pause) and the
decision to retry or dead-letter.
"""
