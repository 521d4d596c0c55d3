-- A document's status follows its ingest job's fate wherever that is decided: by the worker, by
-- the lease rescuer (a job that crashed its worker on its last attempt), or by hand (retry).
create function docpipe.sync_document_status() returns trigger language plpgsql as $$
begin
    if new.status = 'dead' then
        update docpipe.documents
        set status = 'failed', error = new.last_error, updated_at = now()
        where id = new.document_id;
    elsif new.status = 'queued' and old.status in ('dead', 'cancelled') then
        update docpipe.documents
        set status = 'pending', error = null, updated_at = now()
        where id = new.document_id;
    end if;
    return null;
end;
$$;

-- The WHEN clause keeps the trigger off the hot path: claims and completions never match it.
create trigger jobs_sync_document_status after update of status on docpipe.jobs
    for each row
    when (new.document_id is not null and new.kind = 'ingest'
          and (new.status = 'dead'
               or (new.status = 'queued' and old.status in ('dead', 'cancelled'))))
    execute function docpipe.sync_document_status();
