-- Leadership of singleton loops (the pool reconciler) as a lease row instead of a session
-- advisory lock. The holder renews `expires_at` while it leads; anyone may take an expired
-- lease, which moves `term` on. Every write a leader makes first checks, in the same
-- transaction, that it still holds the lease in its term (`for share`, so a takeover waits
-- for writes in flight and every write after it is refused): a deposed or frozen leader
-- cannot change anything, and leadership never waits for TCP keepalives to notice a dead
-- connection. Times are the database's clock, the one every replica shares.
create table leader_leases (
    name        text        primary key,
    holder      uuid        not null,
    -- Who holds it, for people: host, process id.
    holder_info text        not null,
    term        bigint      not null,
    acquired_at timestamptz not null default now(),
    expires_at  timestamptz not null
);
