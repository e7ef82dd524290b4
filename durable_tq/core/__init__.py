"""Queue semantics: the broker (enqueue, claim, settle, leases, fencing, retries, dependencies,
schedules, limits), the sweeper, parked claims and waits, and the clock they all ask."""
