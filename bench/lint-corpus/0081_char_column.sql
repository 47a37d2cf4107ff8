-- @what: ADD COLUMN char(2)
-- @hazard: style-char
-- @why: style: char pads with blanks; text is preferred
-- safe: before_deploy

alter table users add column country char(2);
