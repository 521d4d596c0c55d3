-- Originals may live in S3-compatible object storage (DOCPIPE_ORIGINALS_STORE=s3): the document
-- then keeps its hash and the object's key, and no bytes. Embedded (the default) keeps the bytes
-- here as before. A document has its bytes in one place or the other, never neither.
alter table docpipe.documents add column content_key text;
alter table docpipe.documents alter column content drop not null;
alter table docpipe.documents add constraint documents_original_somewhere
    check (content is not null or content_key is not null);
