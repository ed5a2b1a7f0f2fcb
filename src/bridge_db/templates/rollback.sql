-- Rollback ${number}: ${description}
-- Reverses:    ${forward}
--
-- Guidelines (migrations/README.md):
--   * IF EXISTS on every DROP; drop indexes before their tables.
--   * Undo the forward file's operations in reverse order.
--   * CASCADE only for a table that other tables reference by foreign key.

