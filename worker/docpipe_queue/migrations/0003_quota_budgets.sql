-- Provider quotas shared by the fleet (ADR 0005): one row per quota (provider, API key hash,
-- model) holding a token bucket for requests and one for tokens, and the slices it granted that
-- are still live. A process touches its quota's row once per slice (about a second's worth of
-- budget), never per request; times are the server's, so process clocks do not matter.
create table docpipe.quota_budgets (
    provider text not null,
    key_hash text not null,
    model text not null,
    -- The buckets' levels at `at` (refill is computed from the time elapsed since).
    requests_level double precision not null default 0,
    tokens_level double precision not null default 0,
    at timestamptz not null default clock_timestamp(),
    -- A 429 empties the buckets and stops grants until then.
    blocked_until timestamptz not null default to_timestamp(0),
    -- The largest single request seen: the capacity covers it.
    largest_requests double precision not null default 0,
    largest_tokens double precision not null default 0,
    -- The live slices: [[id, requests, tokens, expires_at (epoch seconds)], ...]. An expired
    -- slice counts as spent and is dropped by the next statement on the row.
    reservations jsonb not null default '[]',
    -- The limits in force at the last statement (min of configured and learned), for reading.
    requests_per_minute integer,
    tokens_per_minute integer,
    primary key (provider, key_hash, model)
) with (fillfactor = 50);  -- room for HOT updates: the row is rewritten once per slice
