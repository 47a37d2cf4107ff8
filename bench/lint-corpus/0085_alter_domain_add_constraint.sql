-- @what: ALTER DOMAIN ... ADD CONSTRAINT
-- @hazard: domain-constraint
-- @why: checks every column of the domain in every table, under lock
-- safe: before_deploy

alter domain positive_amount add constraint positive_amount_check check (value > 0);
