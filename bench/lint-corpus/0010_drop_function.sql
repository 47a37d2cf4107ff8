-- @what: DROP FUNCTION
-- @hazard: drop-function
-- @why: the old code may call it
-- safe: before_deploy

drop function order_total(bigint);
