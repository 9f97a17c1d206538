-- A key revoked or deleted (with its tenant, by the cascade) is announced on
-- `hodei_api_keys` in the transaction that changes it: every replica then forgets the
-- keys it cached (`key_cache`), so a revoked key's next request is refused.
create function notify_api_keys_changed() returns trigger language plpgsql as $$
begin
    perform pg_notify('hodei_api_keys', '');
    return null;
end
$$;

create trigger api_keys_changed after update or delete on api_keys
    for each statement execute function notify_api_keys_changed();
