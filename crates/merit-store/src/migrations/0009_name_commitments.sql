-- An unpublished datanet is named on the ledger by a salted hash of its name
-- (merit_ledger::event::name_commitment); publishing reveals the salt.
ALTER TABLE datanets ADD COLUMN name_salt TEXT;
ALTER TABLE datanets ADD COLUMN name_commitment TEXT;
CREATE INDEX datanets_name_commitment ON datanets (name_commitment);
