-- The audit trail (issue 21): who did what through the intake API. One row per state-changing
-- request (upload, reprocess, delete, retry), written by the API in the same transaction as the
-- action when it succeeds, and in a short transaction of its own when it is refused (no action
-- transaction exists then). Read by admins through GET /v1/audit; trimmed only by
-- `docpipe audit purge`. The statements are in docpipe_queue/audit.py.
--
-- No foreign keys: the record of a delete must outlive the document, and `docpipe jobs purge`
-- must not take audit rows with the jobs it deletes.
--
-- Upgrade-safe: a new table, function and triggers; previous releases neither read nor write them.
create table docpipe.audit_events (
    id bigint generated always as identity primary key,
    -- The action's transaction time (now()): the moment the action took effect.
    at timestamptz not null default now(),
    -- The token's `sub`, and the owner of the documents acted on (today the same: a caller acts on
    -- its own documents; kept apart so that acting for another owner can be recorded).
    subject text not null,
    owner text not null,
    request_id text,
    action text not null,
    pipeline text,
    document_id uuid,
    job_id bigint,
    -- ok: it took effect (status 2xx). refused: a 4xx answered, nothing changed. failed: a 5xx
    -- answered, nothing changed (the action's transaction, if any, rolled back).
    outcome text not null check (outcome in ('ok', 'refused', 'failed')),
    status smallint not null check (status between 100 and 599),
    -- The error code of a refusal or failure (`not_found`, `insufficient_scope`...); null when ok.
    error text,
    check (case outcome when 'ok' then status < 400 when 'refused' then status between 400 and 499
           else status >= 500 end)
);

-- GET /v1/audit pages newest first by id, filtered by subject or owner; the retention command
-- and the since/until filters find rows by time.
create index audit_events_at on docpipe.audit_events (at);
create index audit_events_subject on docpipe.audit_events (subject, id);
create index audit_events_owner on docpipe.audit_events (owner, id);

-- Append-only, enforced here and not by privileges: REVOKE does not bind the table's owner (it can
-- grant itself the privilege back) nor a superuser, and the API typically connects as the role that
-- ran the migrations, which owns the table. Triggers fire for every role, the owner included.
--
-- * UPDATE: always refused.
-- * TRUNCATE: always refused (a statement trigger; row triggers do not see a TRUNCATE).
-- * DELETE: refused, except for rows older than the cutoff the retention command declares in its
--   own transaction: `select set_config('docpipe.audit_purge_before', <timestamptz>, true)`
--   (transaction-local, so it ends with the purge's batch). A row younger than the cutoff is
--   refused even then, so a bug in a purge cannot delete recent history.
--
-- What it protects against: application bugs, mistaken hand-written SQL, cascades. What it cannot
-- protect against: a role that may drop or disable the trigger (the table's owner, a superuser,
-- or a superuser's `session_replication_role = replica`); any role can set the setting, so a
-- deliberate DELETE of old rows is possible for a role with the DELETE privilege. For evidence
-- against a database administrator, ship the rows elsewhere as well (docs/operations.md).
create function docpipe.audit_events_append_only() returns trigger
language plpgsql as $$
declare
    purge_before timestamptz;
begin
    if tg_op = 'DELETE' and tg_level = 'ROW' then
        purge_before := nullif(current_setting('docpipe.audit_purge_before', true), '')::timestamptz;
        if purge_before is not null and old.at < purge_before then
            return old;
        end if;
    end if;
    raise exception 'docpipe.audit_events is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege',
              hint = 'rows older than the retention period are deleted by `docpipe audit purge`';
end
$$;

create trigger audit_events_append_only
    before update or delete on docpipe.audit_events
    for each row execute function docpipe.audit_events_append_only();

create trigger audit_events_no_truncate
    before truncate on docpipe.audit_events
    for each statement execute function docpipe.audit_events_append_only();
