-- @what: CLUSTER
-- @hazard: rewrite-maint
-- @why: rewrites the table under ACCESS EXCLUSIVE
-- safe: before_deploy

cluster orders using orders_status_idx;
