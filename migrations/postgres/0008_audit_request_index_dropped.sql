-- No query looks audit records up by request id (find_audit filters by time, merchant, caller,
-- operation and outcome), yet every record paid for this index: a random 36-character UUID
-- key is one more random page dirtied per record in every group commit. Dropped (issue 18).
DROP INDEX IF EXISTS audit_log_request;
