-- Where an instance runs within its region (an availability zone), once its provider's
-- listing says it: a spot instance is priced at its zone's quote from then on (before,
-- at the region's highest).
alter table instances add column zone text;
