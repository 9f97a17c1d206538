-- Events and queue activity keep their tenant's id without a foreign key. The key made
-- every transaction that wrote an event or an activity row lock the tenant's row (`for key
-- share`): a lock record in the WAL, a multixact when transactions overlapped (they always
-- do: every job of a tenant writes events), and a lookup per row. `tenants::delete`
-- deletes both itself, after the tenant's jobs and row, so none it must see is missed:
-- it deletes only when none of the jobs it deleted had not ended, and an ended job's
-- events are written holding its row lock, which the delete waited for. An activity row
-- written without a job (a rejected submit) as the tenant is deleted can outlive it;
-- retention prunes it with the rest of the activity.
alter table job_events drop constraint job_events_tenant_id_fkey;
alter table queue_activity drop constraint queue_activity_tenant_id_fkey;
