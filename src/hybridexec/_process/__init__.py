"""The process lane: our own pool of worker processes, one private pipe per worker.

Data flow::

    caller threads                manager thread                     worker processes
    --------------                --------------                     ----------------
    ProcessLane.submit()  ->  pending deque + wake-up pipe  ->  dispatch on the worker's pipe
                              wait(pipes, sentinels, wake-up,       run the call(s)
                                   timeout=next deadline)     <-   result / remote traceback
    futures resolved  <-      results, crashes, deadlines

Only the manager thread touches worker pipes and sentinels; everything else hands it messages.
"""
