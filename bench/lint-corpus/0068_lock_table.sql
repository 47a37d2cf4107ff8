-- @what: LOCK TABLE ... ACCESS EXCLUSIVE
-- @hazard: explicit-lock
-- @why: holds the strongest lock for the rest of the transaction
-- safe: before_deploy

lock table orders in access exclusive mode;
update orders set status = 'new' where status is null;
