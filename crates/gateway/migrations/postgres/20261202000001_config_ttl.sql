-- A key written with a time to live (the Admin API's `?ttl=`, etcd's lease): when it lapses,
-- in Unix seconds; NULL for good. Expired keys are deleted as a change of their own.
ALTER TABLE gateway_config ADD COLUMN expires_at BIGINT;
